use btree::Db;

#[test]
fn one_million_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.db");
    const N: u64 = 1_000_000;
    let key = |i: u64| {
        // Spread keys so inserts land all over the tree.
        let mut k = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .to_be_bytes()
            .to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    {
        let db = Db::open(&path).unwrap();
        let mut tx = db.begin_write().unwrap();
        tx.create_bucket(b"key").unwrap();
        tx.commit().unwrap();
        for chunk in 0..(N / 50_000) {
            let mut tx = db.begin_write().unwrap();
            for i in chunk * 50_000..(chunk + 1) * 50_000 {
                tx.put(b"key", &key(i), &i.to_le_bytes()).unwrap();
            }
            tx.commit_nosync().unwrap();
        }
        db.sync().unwrap();
    }
    let db = Db::open(&path).unwrap();
    let rx = db.begin_read();
    let b = rx.open_bucket(b"key").unwrap();
    assert_eq!(b.len(), N);
    for i in (0..N).step_by(997) {
        assert_eq!(b.get(&key(i)).unwrap(), Some(&i.to_le_bytes()[..]));
    }
    let mut count = 0u64;
    let mut prev: Option<Vec<u8>> = None;
    for item in b.range(b"", None) {
        let (k, _) = item.unwrap();
        assert!(prev.as_deref().is_none_or(|p| p < k));
        prev = Some(k.to_vec());
        count += 1;
    }
    assert_eq!(count, N);
    let stats = db.stats();
    let st = &stats.buckets[0];
    assert_eq!(st.keys, N);
    assert!((3..=5).contains(&st.depth), "depth {}", st.depth);
    crate::assert_clean(&db);
}
