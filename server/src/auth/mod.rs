//! Authentication and authorization, etcd's model.
//!
//! - [`store`]: users, roles, permissions, the enabled flag and the auth
//!   revision, in the database's auth buckets; changed only through raft
//!   (every member applies the same); and every permission check.
//! - [`perms`]: a user's key permissions as merged key intervals.
//! - [`tokens`]: simple tokens, assigned by an applied login entry;
//!   [`jwt`]: signed tokens (`--auth-token jwt,...`).
//!
//! How a request is checked:
//! - A handler turns the request's `token` metadata into a
//!   [`Caller`](crate::pb::kvserverpb::Caller) (user and auth revision;
//!   none: anonymous, user name empty). A token that is not known is
//!   refused at once ("etcdserver: invalid auth token").
//! - Reads are checked by the handler after the read index. Writes carry
//!   the caller in the raft entry and are checked when applied, against
//!   the auth store as it is at that index, so every member decides alike
//!   and a permission revoked before the entry is refused; an entry made
//!   under an older auth revision gets "etcdserver: revision of auth store
//!   is old".
//! - Passwords are hashed with bcrypt by the handler (at `--bcrypt-cost`),
//!   at most one at a time so that a flood of logins cannot take the
//!   member's cores; the plain password never reaches raft.
//! - Requests the server makes itself (expired leases, checkpoints) carry
//!   no caller and are not checked.

pub mod jwt;
pub mod perms;
pub mod store;
pub mod tokens;

pub use store::{AuthStore, ROOT};
