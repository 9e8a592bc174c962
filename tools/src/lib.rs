//! kvtool's readers of foreign files, kept apart from its commands so that
//! fuzz targets and tests reach them: [`bbolt`] reads bbolt database files
//! (etcd's backend) and [`etcd`] finds etcd's records in them.
//!
//! Invariant: no input makes them panic, loop or read outside the bytes
//! given; every problem is a typed error naming the page or record.

pub mod bbolt;
pub mod etcd;
