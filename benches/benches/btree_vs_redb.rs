//! The btree crate side by side with redb, same workloads, same run.
//!
//! Workloads (16-byte keys, 100-byte values, as the btree issue asks):
//! - `insert_sequential`: 1M keys in ascending order, 1000 per durable commit
//! - `insert_random`: 1M keys in random order, 1000 per durable commit
//! - `get_random`: random point reads over 1M keys (1000 per read transaction)
//! - `range_10k`: a scan of 10,000 consecutive keys from a random start
//!
//! `BENCH_KEYS=N` shrinks the key count (the CI smoke run uses it).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use redb::{ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key");
const BUCKET: &[u8] = b"key";
const VALUE: [u8; 100] = [0x5a; 100];
const BATCH: usize = 1000;

fn key_count() -> u64 {
    kvserver_benches::size("BENCH_KEYS", 1_000_000, 2_000)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Key `i` in ascending order.
fn seq_key(i: u64) -> [u8; 16] {
    (i as u128).to_be_bytes()
}

/// Key `i` of a random-looking order (a bijection of `i`, so no repeats).
fn random_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&splitmix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

trait Engine {
    const NAME: &'static str;
    fn create(path: &Path) -> Self;
    fn insert(&self, keys: &[[u8; 16]]);
    fn get_all(&self, keys: &[[u8; 16]]) -> usize;
    fn scan(&self, start: &[u8], n: usize) -> usize;
}

struct Ours(btree::Db);

impl Engine for Ours {
    const NAME: &'static str = "btree";
    fn create(path: &Path) -> Self {
        let db = btree::Db::open(path).expect("open");
        let mut tx = db.begin_write().expect("begin");
        tx.create_bucket(BUCKET).expect("bucket");
        tx.commit().expect("commit");
        Ours(db)
    }
    fn insert(&self, keys: &[[u8; 16]]) {
        let mut tx = self.0.begin_write().expect("begin");
        for k in keys {
            tx.put(BUCKET, k, &VALUE).expect("put");
        }
        tx.commit().expect("commit");
    }
    fn get_all(&self, keys: &[[u8; 16]]) -> usize {
        let rx = self.0.begin_read();
        let b = rx.open_bucket(BUCKET).expect("bucket");
        keys.iter()
            .map(|k| b.get(k).expect("get").map_or(0, <[u8]>::len))
            .sum()
    }
    fn scan(&self, start: &[u8], n: usize) -> usize {
        let rx = self.0.begin_read();
        let b = rx.open_bucket(BUCKET).expect("bucket");
        b.range(start, None)
            .take(n)
            .map(|e| e.expect("range").1.len())
            .sum()
    }
}

struct Redb(redb::Database);

impl Engine for Redb {
    const NAME: &'static str = "redb";
    fn create(path: &Path) -> Self {
        let db = redb::Database::create(path).expect("create");
        let tx = db.begin_write().expect("begin");
        tx.open_table(TABLE).expect("table");
        tx.commit().expect("commit");
        Redb(db)
    }
    fn insert(&self, keys: &[[u8; 16]]) {
        let tx = self.0.begin_write().expect("begin");
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for k in keys {
                t.insert(&k[..], &VALUE[..]).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    fn get_all(&self, keys: &[[u8; 16]]) -> usize {
        let rx = self.0.begin_read().expect("begin");
        let t = rx.open_table(TABLE).expect("table");
        keys.iter()
            .map(|k| t.get(&k[..]).expect("get").map_or(0, |v| v.value().len()))
            .sum()
    }
    fn scan(&self, start: &[u8], n: usize) -> usize {
        let rx = self.0.begin_read().expect("begin");
        let t = rx.open_table(TABLE).expect("table");
        t.range(start..)
            .expect("range")
            .take(n)
            .map(|e| e.expect("range").1.value().len())
            .sum()
    }
}

fn load<E: Engine>(path: &Path, keys: &[[u8; 16]]) -> (E, Duration) {
    let e = E::create(path);
    let t = Instant::now();
    for chunk in keys.chunks(BATCH) {
        e.insert(chunk);
    }
    (e, t.elapsed())
}

fn bench_insert<E: Engine>(c: &mut Criterion, group: &str, keys: &[[u8; 16]]) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function(BenchmarkId::from_parameter(E::NAME), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let (_, took) = load::<E>(&dir.path().join("db"), keys);
                total += took;
            }
            total
        })
    });
    g.finish();
}

fn bench_reads<E: Engine>(c: &mut Criterion, keys: &[[u8; 16]]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = load::<E>(&dir.path().join("db"), keys);
    let n = keys.len() as u64;

    let mut g = c.benchmark_group("get_random");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut round = 0u64;
    g.bench_function(BenchmarkId::from_parameter(E::NAME), |b| {
        b.iter(|| {
            round += 1;
            let probe: Vec<[u8; 16]> = (0..BATCH as u64)
                .map(|i| keys[(splitmix(round * 7919 + i) % n) as usize])
                .collect();
            assert_eq!(engine.get_all(&probe), BATCH * VALUE.len());
        })
    });
    g.finish();

    let mut g = c.benchmark_group("range_10k");
    let span = 10_000usize.min(keys.len() / 2);
    g.throughput(Throughput::Elements(span as u64));
    g.bench_function(BenchmarkId::from_parameter(E::NAME), |b| {
        b.iter(|| {
            round += 1;
            let start = seq_key(splitmix(round) % (n - span as u64));
            assert_eq!(engine.scan(&start, span), span * VALUE.len());
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let n = key_count();
    let sequential: Vec<[u8; 16]> = (0..n).map(seq_key).collect();
    let random: Vec<[u8; 16]> = (0..n).map(random_key).collect();
    // Alternate engines within each workload so both see the same machine state.
    bench_insert::<Ours>(c, "insert_sequential", &sequential);
    bench_insert::<Redb>(c, "insert_sequential", &sequential);
    bench_insert::<Ours>(c, "insert_random", &random);
    bench_insert::<Redb>(c, "insert_random", &random);
    bench_reads::<Ours>(c, &sequential);
    bench_reads::<Redb>(c, &sequential);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = all
}
criterion_main!(benches);
