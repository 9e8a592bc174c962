//! The auth store: users, roles and their permissions, whether auth is
//! enabled, and the auth revision; kept in the database's auth buckets
//! (mvcc/FORMAT.md) and in memory, changed only by applied raft entries,
//! so every member holds the same. Also every permission check.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use prost::Message as _;

use super::perms::UserPerms;
use super::tokens::SimpleTokens;
use crate::apply::Applied;
use crate::error::ServerError;
use crate::pb::authpb;
use crate::pb::etcdserverpb as pb;
use crate::pb::kvserverpb::{request::Op, Caller};
use mvcc::AuthBucket;

const ENABLED_KEY: &[u8] = b"authEnabled";
const REVISION_KEY: &[u8] = b"authRevision";
/// The user and the role that may do anything.
pub const ROOT: &str = "root";

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, authpb::User>,
    roles: BTreeMap<String, authpb::Role>,
    /// Each user's permissions, merged from its roles.
    perms: HashMap<String, UserPerms>,
}

impl State {
    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .iter()
            .map(|(name, u)| {
                let p = UserPerms::from_roles(u.roles.iter().filter_map(|r| roles.get(r)));
                (name.clone(), p)
            })
            .collect();
    }

    fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}

/// What a stored record failed to decode as.
fn corrupt(what: &str, e: prost::DecodeError) -> mvcc::Error {
    mvcc::Error::Corrupt {
        rev: mvcc::Revision::default(),
        reason: format!("auth store {what}: {e}"),
    }
}

fn read_state(store: &mvcc::Store) -> Result<State, mvcc::Error> {
    let mut s = State {
        revision: 1,
        ..State::default()
    };
    for (k, v) in store.auth_records(AuthBucket::Meta)? {
        match k.as_slice() {
            ENABLED_KEY => s.enabled = v.first() == Some(&1),
            REVISION_KEY if v.len() == 8 => {
                s.revision = u64::from_be_bytes(v.as_slice().try_into().unwrap_or_default())
            }
            _ => {}
        }
    }
    for (k, v) in store.auth_records(AuthBucket::Users)? {
        let u = authpb::User::decode(v.as_slice()).map_err(|e| corrupt("user", e))?;
        s.users.insert(String::from_utf8_lossy(&k).into_owned(), u);
    }
    for (k, v) in store.auth_records(AuthBucket::Roles)? {
        let r = authpb::Role::decode(v.as_slice()).map_err(|e| corrupt("role", e))?;
        s.roles.insert(String::from_utf8_lossy(&k).into_owned(), r);
    }
    s.refresh_perms();
    Ok(s)
}

pub struct AuthStore {
    state: RwLock<State>,
    pub tokens: SimpleTokens,
    /// JWT tokens instead of simple ones (`--auth-token jwt,...`).
    pub jwt: Option<super::jwt::JwtTokens>,
    pub bcrypt_cost: u32,
}

/// An applied auth request's effect on the batch.
struct Change<'a, 'b> {
    batch: &'a mut mvcc::Apply<'b>,
}

impl Change<'_, '_> {
    fn user(&mut self, u: &authpb::User) -> Result<(), mvcc::Error> {
        self.batch
            .set_auth_record(AuthBucket::Users, &u.name, Some(&u.encode_to_vec()))
    }

    fn role(&mut self, r: &authpb::Role) -> Result<(), mvcc::Error> {
        self.batch
            .set_auth_record(AuthBucket::Roles, &r.name, Some(&r.encode_to_vec()))
    }
}

impl AuthStore {
    pub fn load(
        store: &mvcc::Store,
        token_ttl: Duration,
        jwt: Option<super::jwt::JwtTokens>,
        bcrypt_cost: u32,
    ) -> Result<AuthStore, mvcc::Error> {
        Ok(AuthStore {
            state: RwLock::new(read_state(store)?),
            tokens: SimpleTokens::new(token_ttl),
            jwt,
            bcrypt_cost,
        })
    }

    /// The caller a token names, as far as this member knows now (a simple
    /// token's login must have been applied here).
    pub fn resolve(&self, token: &str) -> Option<Caller> {
        match &self.jwt {
            Some(j) => j.verify(token).map(|(username, auth_revision)| Caller {
                username,
                auth_revision,
            }),
            None => self.tokens.user_of(token).map(|username| Caller {
                username,
                auth_revision: self.revision(),
            }),
        }
    }

    /// Reads the store again (after a snapshot was installed).
    pub fn reload(&self, store: &mvcc::Store) -> Result<(), mvcc::Error> {
        let fresh = read_state(store)?;
        *self.write() = fresh;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enabled(&self) -> bool {
        self.read().enabled
    }

    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// The stored password hash of `name` and whether it logs in without a
    /// password (None: no such user).
    pub fn password_of(&self, name: &str) -> Option<(Vec<u8>, bool)> {
        let s = self.read();
        s.users.get(name).map(|u| {
            let no_password = u.options.as_ref().is_some_and(|o| o.no_password);
            (u.password.clone(), no_password)
        })
    }

    /// etcd's IsAdminPermitted: anyone while auth is disabled, else a user
    /// with the root role. `None` is the server itself.
    pub fn check_admin(&self, caller: Option<&Caller>) -> Result<(), ServerError> {
        let s = self.read();
        let Some(c) = caller.filter(|_| s.enabled) else {
            return Ok(());
        };
        if c.username.is_empty() {
            return Err(ServerError::UserEmpty);
        }
        if !s.users.contains_key(&c.username) {
            return Err(ServerError::UserNotFound);
        }
        if !s.has_role(&c.username, ROOT) {
            return Err(ServerError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's isOpPermitted: `allowed` says whether the user's permissions
    /// allow the operation.
    fn check_op(
        &self,
        caller: Option<&Caller>,
        allowed: impl FnOnce(&UserPerms) -> bool,
    ) -> Result<(), ServerError> {
        let s = self.read();
        let Some(c) = caller.filter(|_| s.enabled) else {
            return Ok(());
        };
        if c.auth_revision == 0 || c.username.is_empty() {
            return Err(ServerError::UserEmpty);
        }
        if c.auth_revision < s.revision {
            return Err(ServerError::AuthOldRevision);
        }
        if !s.users.contains_key(&c.username) {
            return Err(ServerError::PermissionDenied);
        }
        if s.has_role(&c.username, ROOT) {
            return Ok(());
        }
        match s.perms.get(&c.username) {
            Some(p) if allowed(p) => Ok(()),
            _ => Err(ServerError::PermissionDenied),
        }
    }

    pub fn check_read(
        &self,
        caller: Option<&Caller>,
        key: &[u8],
        end: &[u8],
    ) -> Result<(), ServerError> {
        self.check_op(caller, |p| p.read.covers(key, end))
    }

    pub fn check_write(
        &self,
        caller: Option<&Caller>,
        key: &[u8],
        end: &[u8],
    ) -> Result<(), ServerError> {
        self.check_op(caller, |p| p.write.covers(key, end))
    }

    /// A transaction: every compare needs read; every operation of both
    /// branches (nested transactions included) what it does.
    pub fn check_txn(
        &self,
        caller: Option<&Caller>,
        t: &pb::TxnRequest,
    ) -> Result<(), ServerError> {
        use pb::request_op::Request as R;
        for c in &t.compare {
            self.check_read(caller, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(R::RequestRange(r)) => self.check_read(caller, &r.key, &r.range_end)?,
                Some(R::RequestPut(p)) => {
                    self.check_write(caller, &p.key, b"")?;
                    if p.prev_kv {
                        self.check_read(caller, &p.key, b"")?;
                    }
                }
                Some(R::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.check_read(caller, &d.key, &d.range_end)?;
                    }
                    self.check_write(caller, &d.key, &d.range_end)?;
                }
                Some(R::RequestTxn(inner)) => self.check_txn(caller, inner)?,
                None => {}
            }
        }
        Ok(())
    }

    /// The check of a committed request before it is applied (the caller
    /// is in the entry). `lease_keys` gives the keys attached to a lease.
    pub fn check_request(
        &self,
        caller: Option<&Caller>,
        op: &Op,
        lease_keys: impl Fn(i64) -> Option<Vec<Vec<u8>>>,
    ) -> Result<(), ServerError> {
        if caller.is_none() || !self.enabled() {
            return Ok(());
        }
        let attached = |id: i64| -> Result<(), ServerError> {
            for k in lease_keys(id).unwrap_or_default() {
                self.check_write(caller, &k, b"")?;
            }
            Ok(())
        };
        match op {
            Op::Put(p) => {
                self.check_write(caller, &p.key, b"")?;
                if p.lease != 0 {
                    attached(p.lease)?;
                }
                if p.prev_kv {
                    self.check_read(caller, &p.key, b"")?;
                }
                Ok(())
            }
            Op::DeleteRange(d) => {
                self.check_write(caller, &d.key, &d.range_end)?;
                if d.prev_kv {
                    self.check_read(caller, &d.key, &d.range_end)?;
                }
                Ok(())
            }
            Op::Txn(t) => self.check_txn(caller, t),
            Op::LeaseRevoke(r) => attached(r.id),
            Op::Compaction(_) => self.check_admin(caller),
            Op::Alarm(a) if a.action() == pb::alarm_request::AlarmAction::Deactivate => {
                self.check_admin(caller)
            }
            Op::Authenticated(_) => Ok(()),
            Op::AuthEnable(_)
            | Op::AuthDisable(_)
            | Op::UserAdd(_)
            | Op::UserDelete(_)
            | Op::UserChangePassword(_)
            | Op::UserGrantRole(_)
            | Op::UserRevokeRole(_)
            | Op::RoleAdd(_)
            | Op::RoleDelete(_)
            | Op::RoleGrantPermission(_)
            | Op::RoleRevokePermission(_)
            | Op::MemberChange(_) => self.check_admin(caller),
            Op::LeaseGrant(_)
            | Op::Alarm(_)
            | Op::MemberAttributes(_)
            | Op::LeaseCheckpoints(_) => Ok(()),
        }
    }

    /// UserGet: root, or the user asking about itself.
    pub fn user_get(&self, caller: &Caller, name: &str) -> Result<Vec<String>, ServerError> {
        if caller.username != name {
            self.check_admin(Some(caller))?;
        }
        let s = self.read();
        let u = s.users.get(name).ok_or(ServerError::UserNotFound)?;
        Ok(u.roles.clone())
    }

    pub fn user_list(&self, caller: &Caller) -> Result<Vec<String>, ServerError> {
        self.check_admin(Some(caller))?;
        Ok(self.read().users.keys().cloned().collect())
    }

    /// RoleGet: root, or a user holding the role.
    pub fn role_get(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<authpb::Permission>, ServerError> {
        let holds = self.read().has_role(&caller.username, name);
        if !holds {
            self.check_admin(Some(caller))?;
        }
        let s = self.read();
        let r = s.roles.get(name).ok_or(ServerError::RoleNotFound)?;
        Ok(r.key_permission.clone())
    }

    pub fn role_list(&self, caller: &Caller) -> Result<Vec<String>, ServerError> {
        self.check_admin(Some(caller))?;
        Ok(self.read().roles.keys().cloned().collect())
    }

    fn bump(state: &mut State, ch: &mut Change<'_, '_>) -> Result<(), mvcc::Error> {
        state.revision += 1;
        ch.batch.set_auth_record(
            AuthBucket::Meta,
            REVISION_KEY,
            Some(&state.revision.to_be_bytes()),
        )
    }

    /// Applies an auth request (already checked by [`Self::check_request`])
    /// at raft index `index`. None: `op` is not one.
    pub fn apply(
        &self,
        batch: &mut mvcc::Apply<'_>,
        op: &Op,
        index: u64,
    ) -> Result<Option<Result<Applied, ServerError>>, mvcc::Error> {
        let mut guard = self.write();
        let s = &mut *guard;
        let mut ch = Change { batch };
        let done: Result<Applied, ServerError> = match op {
            Op::AuthEnable(_) => {
                if s.enabled {
                    Ok(Applied::Auth)
                } else if !s.users.contains_key(ROOT) {
                    Err(ServerError::RootUserNotExist)
                } else if !s.has_role(ROOT, ROOT) {
                    Err(ServerError::RootRoleNotExist)
                } else {
                    s.enabled = true;
                    ch.batch
                        .set_auth_record(AuthBucket::Meta, ENABLED_KEY, Some(&[1]))?;
                    Ok(Applied::Auth)
                }
            }
            Op::AuthDisable(_) => {
                if s.enabled {
                    s.enabled = false;
                    ch.batch
                        .set_auth_record(AuthBucket::Meta, ENABLED_KEY, Some(&[0]))?;
                    Self::bump(s, &mut ch)?;
                    self.tokens.clear();
                }
                Ok(Applied::Auth)
            }
            Op::Authenticated(a) => {
                let no_password =
                    |u: &authpb::User| u.options.as_ref().is_some_and(|o| o.no_password);
                match s.users.get(&a.name) {
                    _ if !s.enabled => Err(ServerError::AuthNotEnabled),
                    Some(u) if !no_password(u) => match &self.jwt {
                        Some(j) => j
                            .sign(&a.name, s.revision)
                            .map(Applied::Token)
                            .map_err(ServerError::Internal),
                        None => Ok(Applied::Token(self.tokens.assign(
                            &a.token_prefix,
                            index,
                            &a.name,
                        ))),
                    },
                    _ => Err(ServerError::AuthFailed),
                }
            }
            Op::UserAdd(r) => {
                if r.name.is_empty() {
                    Err(ServerError::UserEmpty)
                } else if s.users.contains_key(&r.name) {
                    Err(ServerError::UserAlreadyExist)
                } else {
                    let options = r.options.unwrap_or_default();
                    let u = authpb::User {
                        name: r.name.clone().into_bytes(),
                        password: if options.no_password {
                            Vec::new()
                        } else {
                            r.hashed_password.clone().into_bytes()
                        },
                        roles: Vec::new(),
                        options: Some(options),
                    };
                    ch.user(&u)?;
                    s.users.insert(r.name.clone(), u);
                    Self::bump(s, &mut ch)?;
                    s.refresh_perms();
                    Ok(Applied::Auth)
                }
            }
            Op::UserDelete(r) => {
                if s.enabled && r.name == ROOT {
                    Err(ServerError::InvalidAuthMgmt)
                } else if s.users.remove(&r.name).is_none() {
                    Err(ServerError::UserNotFound)
                } else {
                    ch.batch
                        .set_auth_record(AuthBucket::Users, r.name.as_bytes(), None)?;
                    Self::bump(s, &mut ch)?;
                    s.refresh_perms();
                    self.tokens.invalidate_user(&r.name);
                    Ok(Applied::Auth)
                }
            }
            Op::UserChangePassword(r) => match s.users.get_mut(&r.name) {
                None => Err(ServerError::UserNotFound),
                Some(u) => {
                    let no_password = u.options.as_ref().is_some_and(|o| o.no_password);
                    if !no_password {
                        u.password = r.hashed_password.clone().into_bytes();
                    }
                    let u = u.clone();
                    ch.user(&u)?;
                    Self::bump(s, &mut ch)?;
                    self.tokens.invalidate_user(&r.name);
                    Ok(Applied::Auth)
                }
            },
            Op::UserGrantRole(r) => {
                let role_known = r.role == ROOT || s.roles.contains_key(&r.role);
                match s.users.get_mut(&r.user) {
                    None => Err(ServerError::UserNotFound),
                    Some(_) if !role_known => Err(ServerError::RoleNotFound),
                    Some(u) if u.roles.contains(&r.role) => Ok(Applied::Auth),
                    Some(u) => {
                        u.roles.push(r.role.clone());
                        u.roles.sort();
                        let u = u.clone();
                        ch.user(&u)?;
                        Self::bump(s, &mut ch)?;
                        s.refresh_perms();
                        Ok(Applied::Auth)
                    }
                }
            }
            Op::UserRevokeRole(r) => {
                if s.enabled && r.name == ROOT && r.role == ROOT {
                    Err(ServerError::InvalidAuthMgmt)
                } else {
                    match s.users.get_mut(&r.name) {
                        None => Err(ServerError::UserNotFound),
                        Some(u) if !u.roles.contains(&r.role) => Err(ServerError::RoleNotGranted),
                        Some(u) => {
                            u.roles.retain(|x| *x != r.role);
                            let u = u.clone();
                            ch.user(&u)?;
                            Self::bump(s, &mut ch)?;
                            s.refresh_perms();
                            Ok(Applied::Auth)
                        }
                    }
                }
            }
            Op::RoleAdd(r) => {
                if r.name.is_empty() {
                    Err(ServerError::RoleEmpty)
                } else if s.roles.contains_key(&r.name) {
                    Err(ServerError::RoleAlreadyExist)
                } else {
                    let role = authpb::Role {
                        name: r.name.clone().into_bytes(),
                        key_permission: Vec::new(),
                    };
                    ch.role(&role)?;
                    s.roles.insert(r.name.clone(), role);
                    Self::bump(s, &mut ch)?;
                    s.refresh_perms();
                    Ok(Applied::Auth)
                }
            }
            Op::RoleDelete(r) => {
                if s.enabled && r.role == ROOT {
                    Err(ServerError::InvalidAuthMgmt)
                } else if s.roles.remove(&r.role).is_none() {
                    Err(ServerError::RoleNotFound)
                } else {
                    ch.batch
                        .set_auth_record(AuthBucket::Roles, r.role.as_bytes(), None)?;
                    let holders: Vec<authpb::User> = s
                        .users
                        .values_mut()
                        .filter(|u| u.roles.contains(&r.role))
                        .map(|u| {
                            u.roles.retain(|x| *x != r.role);
                            u.clone()
                        })
                        .collect();
                    for u in &holders {
                        ch.user(u)?;
                    }
                    Self::bump(s, &mut ch)?;
                    s.refresh_perms();
                    Ok(Applied::Auth)
                }
            }
            Op::RoleGrantPermission(r) => match (s.roles.get_mut(&r.name), &r.perm) {
                (None, _) => Err(ServerError::RoleNotFound),
                (Some(_), None) => Err(ServerError::PermissionNotGiven),
                (Some(role), Some(perm)) => {
                    let same = role
                        .key_permission
                        .iter_mut()
                        .find(|p| p.key == perm.key && p.range_end == perm.range_end);
                    match same {
                        Some(p) => p.perm_type = perm.perm_type,
                        None => {
                            role.key_permission.push(perm.clone());
                            role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                        }
                    }
                    let role = role.clone();
                    ch.role(&role)?;
                    Self::bump(s, &mut ch)?;
                    s.refresh_perms();
                    Ok(Applied::Auth)
                }
            },
            Op::RoleRevokePermission(r) => match s.roles.get_mut(&r.role) {
                None => Err(ServerError::RoleNotFound),
                Some(role) => {
                    let before = role.key_permission.len();
                    role.key_permission
                        .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
                    if role.key_permission.len() == before {
                        Err(ServerError::PermissionNotGranted)
                    } else {
                        let role = role.clone();
                        ch.role(&role)?;
                        Self::bump(s, &mut ch)?;
                        s.refresh_perms();
                        Ok(Applied::Auth)
                    }
                }
            },
            _ => return Ok(None),
        };
        Ok(Some(done))
    }
}
