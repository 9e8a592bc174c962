//! Integration tests of the mvcc crate, one binary with a module per area.

mod index_model;
mod store_basics;
mod store_model;
