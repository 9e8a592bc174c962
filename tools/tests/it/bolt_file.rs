//! Small bbolt files built by hand, laid out as bbolt lays them out
//! (tools/ETCD_FORMAT.md), for the reader's tests and bad input.

pub const PS: usize = 4096;

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A leaf element: flags (1 for a nested bucket), key, value.
pub type Elem = (u32, Vec<u8>, Vec<u8>);

/// A leaf page's bytes (not padded) with page id `id`.
pub fn leaf_bytes(id: u64, elems: &[Elem]) -> Vec<u8> {
    let n = elems.len();
    let mut b = vec![0u8; 16 + 16 * n];
    put_u64(&mut b, 0, id);
    put_u16(&mut b, 8, 0x02);
    put_u16(&mut b, 10, n as u16);
    for (i, (flags, k, v)) in elems.iter().enumerate() {
        let e = 16 + 16 * i;
        let pos = b.len() - e;
        put_u32(&mut b, e, *flags);
        put_u32(&mut b, e + 4, pos as u32);
        put_u32(&mut b, e + 8, k.len() as u32);
        put_u32(&mut b, e + 12, v.len() as u32);
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    b
}

/// A branch page's bytes: (first key, child page) per element.
pub fn branch_bytes(id: u64, children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let n = children.len();
    let mut b = vec![0u8; 16 + 16 * n];
    put_u64(&mut b, 0, id);
    put_u16(&mut b, 8, 0x01);
    put_u16(&mut b, 10, n as u16);
    for (i, (k, child)) in children.iter().enumerate() {
        let e = 16 + 16 * i;
        let pos = b.len() - e;
        put_u32(&mut b, e, pos as u32);
        put_u32(&mut b, e + 4, k.len() as u32);
        put_u64(&mut b, e + 8, *child);
        b.extend_from_slice(k);
    }
    b
}

/// Pads a page to whole pages, recording its overflow count.
pub fn padded(mut b: Vec<u8>) -> Vec<u8> {
    let pages = b.len().div_ceil(PS).max(1);
    put_u32(&mut b, 12, (pages - 1) as u32);
    b.resize(pages * PS, 0);
    b
}

/// A bucket header naming root page `root` (0: inline, `inline` follows).
pub fn bucket_value(root: u64, inline: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    put_u64(&mut v, 0, root);
    v.extend_from_slice(inline);
    v
}

/// An inline bucket holding `elems`.
pub fn inline_bucket(elems: &[Elem]) -> Vec<u8> {
    bucket_value(0, &leaf_bytes(0, elems))
}

fn meta(id: u64, root: u64, high_water: u64, txid: u64) -> Vec<u8> {
    let mut p = vec![0u8; PS];
    put_u64(&mut p, 0, id);
    put_u16(&mut p, 8, 0x04);
    let m = 16;
    put_u32(&mut p, m, 0xED0CDAED);
    put_u32(&mut p, m + 4, 2);
    put_u32(&mut p, m + 8, PS as u32);
    put_u64(&mut p, m + 16, root);
    put_u64(&mut p, m + 32, 2);
    put_u64(&mut p, m + 40, high_water);
    put_u64(&mut p, m + 48, txid);
    let sum = fnv64a(&p[m..m + 56]);
    put_u64(&mut p, m + 56, sum);
    p
}

/// A whole file: two metas, an empty freelist at page 2, the top-level
/// bucket's root at page 3, then `pages` (each padded, numbered from 3).
pub fn file(pages: Vec<Vec<u8>>) -> Vec<u8> {
    let body: Vec<u8> = pages.into_iter().flat_map(padded).collect();
    let high_water = 3 + (body.len() / PS) as u64;
    let mut free = vec![0u8; PS];
    put_u64(&mut free, 0, 2);
    put_u16(&mut free, 8, 0x10);
    let mut f = meta(0, 3, high_water, 4);
    f.extend(meta(1, 3, high_water, 3));
    f.extend(free);
    f.extend(body);
    f
}

/// A bbolt file whose only bucket is `name`, holding `records` inline.
pub fn one_bucket(name: &[u8], records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let elems: Vec<Elem> = records
        .iter()
        .map(|(k, v)| (0, k.to_vec(), v.to_vec()))
        .collect();
    file(vec![leaf_bytes(
        3,
        &[(1, name.to_vec(), inline_bucket(&elems))],
    )])
}
