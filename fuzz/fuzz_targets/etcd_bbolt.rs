//! Mutated bbolt files (seeded with a snapshot saved from etcd 3.4.23) fed
//! to kvtool's reader of etcd's backend: every bucket walked, etcd's meta
//! read. Any input may be refused with an error; none may panic, hang or
//! read out of bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(etcd) = tools::etcd::EtcdBackend::open(data) else {
        return;
    };
    let _ = etcd.meta();
    for name in etcd.bucket_names() {
        let Some(entries) = etcd.entries(name.as_bytes()) else {
            continue;
        };
        for entry in entries {
            match entry {
                // A nested bucket's tree is walked too.
                Ok(e) if e.is_bucket => {
                    if let Ok(b) = etcd.bolt.nested(&e) {
                        for inner in etcd.bolt.entries(b) {
                            if inner.is_err() {
                                break;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
});
