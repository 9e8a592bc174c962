// A load generator on etcd's own Go client (clientv3, the client
// Kubernetes uses), so that kvserver and etcd are measured as Go clients
// see them. Prints one JSON line like `kvtool bench -w json`, with the
// generator's own CPU time (`cpu_seconds`).
//
// Built by benches/common.sh against Debian's golang-etcd-server-dev:
//
//	GO111MODULE=off GOPATH=$tmp:/usr/share/gocode go build -o target/clientv3-bench benches/clientv3/main.go
//
// Usage: clientv3-bench -endpoints a,b -conns 100 -clients 1000 -total 100000 -op put|range
//
//	[-consistency l|s] [-key foo] [-key-size 8] [-val-size 256] [-key-space 100000]
//	[-cacert ca.pem] [-insecure-skip-tls-verify]   (TLS: https:// endpoints)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/pkg/transport"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated client endpoints")
	conns := flag.Int("conns", 1, "clients (gRPC connections)")
	clients := flag.Int("clients", 1, "concurrent requesters, spread over the connections")
	total := flag.Int("total", 10000, "requests in all")
	op := flag.String("op", "put", "put or range")
	consistency := flag.String("consistency", "l", "range consistency: l or s")
	key := flag.String("key", "foo", "the key ranges read")
	keySize := flag.Int("key-size", 8, "bytes of each key put")
	valSize := flag.Int("val-size", 256, "bytes of each value put")
	keySpace := flag.Int("key-space", 100000, "distinct keys put")
	cacert := flag.String("cacert", "", "TLS: the CA that signed the server's certificate")
	insecure := flag.Bool("insecure-skip-tls-verify", false, "TLS without verifying the server's certificate")
	flag.Parse()
	if *op != "put" && *op != "range" {
		fmt.Fprintln(os.Stderr, "-op must be put or range")
		os.Exit(2)
	}

	eps := strings.Split(*endpoints, ",")
	cfg := clientv3.Config{DialTimeout: 5 * time.Second}
	if *cacert != "" || *insecure {
		tlsCfg, err := transport.TLSInfo{TrustedCAFile: *cacert}.ClientConfig()
		if err != nil {
			fmt.Fprintln(os.Stderr, "TLS:", err)
			os.Exit(2)
		}
		tlsCfg.InsecureSkipVerify = *insecure
		cfg.TLS = tlsCfg
	}
	cs := make([]*clientv3.Client, *conns)
	for i := range cs {
		cfg.Endpoints = []string{eps[i%len(eps)]}
		c, err := clientv3.New(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "connecting:", err)
			os.Exit(1)
		}
		defer c.Close()
		cs[i] = c
	}
	value := strings.Repeat("v", *valSize)
	var opts []clientv3.OpOption
	if *consistency == "s" {
		opts = append(opts, clientv3.WithSerializable())
	}

	var next, errors int64
	latencies := make([][]time.Duration, *clients)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := cs[w%len(cs)]
			rng := rand.New(rand.NewSource(int64(w) + 1))
			for atomic.AddInt64(&next, 1) <= int64(*total) {
				t := time.Now()
				var err error
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if *op == "put" {
					k := fmt.Sprintf("%0*d", *keySize, rng.Intn(*keySpace))
					_, err = c.Put(ctx, k, value)
				} else {
					_, err = c.Get(ctx, *key, opts...)
				}
				cancel()
				if err != nil {
					atomic.AddInt64(&errors, 1)
					continue
				}
				latencies[w] = append(latencies[w], time.Since(t))
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)

	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := int(p * float64(len(all)-1))
		return float64(all[i].Microseconds()) / 1000
	}
	// The generator's own CPU time (the whole process, user + system): it
	// shares the machine's cores with the server it measures.
	var ru syscall.Rusage
	cpuSeconds := 0.0
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		cpuSeconds = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	out, _ := json.Marshal(map[string]interface{}{
		"cpu_seconds": cpuSeconds,
		"total":       *total,
		"errors":      errors,
		"seconds":     elapsed.Seconds(),
		"per_second":  float64(len(all)) / elapsed.Seconds(),
		"latency_ms":  map[string]float64{"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1)},
	})
	fmt.Println(string(out))
}
