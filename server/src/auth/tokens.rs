//! Simple tokens (`--auth-token simple`, etcd's default): 16 random
//! letters chosen by the member that checked the password, a dot, and the
//! raft index of the entry that recorded the login. Every member applies
//! that entry, so every member knows the token; tokens live in memory only
//! (a restart forgets them and clients log in again). A token expires
//! after `--auth-token-ttl` without use (each use extends it); changing a
//! user's password or deleting the user drops its tokens, disabling auth
//! drops all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

#[derive(Debug)]
struct Entry {
    user: String,
    expires: Instant,
}

#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, Entry>>,
}

/// Letters of a token's random part.
const PREFIX_LEN: usize = 16;

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh random part for a token.
    pub fn new_prefix() -> String {
        let mut rng = rand::rng();
        (0..PREFIX_LEN)
            .map(|_| {
                let i = rng.random_range(0..52u8);
                char::from(if i < 26 { b'a' + i } else { b'A' + i - 26 })
            })
            .collect()
    }

    /// The raft index a token names (None: not a simple token).
    pub fn index_of(token: &str) -> Option<u64> {
        let (prefix, index) = token.split_once('.')?;
        if prefix.is_empty() || index.contains('.') {
            return None;
        }
        index.parse().ok()
    }

    /// Records the token for `user` from a login applied at `index`.
    pub fn assign(&self, prefix: &str, index: u64, user: &str) -> String {
        let token = format!("{prefix}.{index}");
        let now = Instant::now();
        let mut t = self.lock();
        t.retain(|_, e| e.expires > now);
        t.insert(
            token.clone(),
            Entry {
                user: user.to_string(),
                expires: now + self.ttl,
            },
        );
        token
    }

    /// The user a live token belongs to; using it extends it.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut t = self.lock();
        let e = t.get_mut(token)?;
        if e.expires <= now {
            t.remove(token);
            return None;
        }
        e.expires = now + self.ttl;
        Some(e.user.clone())
    }

    pub fn invalidate_user(&self, user: &str) {
        self.lock().retain(|_, e| e.user != user);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_index_expire_and_go_with_their_user() {
        let prefix = SimpleTokens::new_prefix();
        assert_eq!(prefix.len(), 16);
        assert!(prefix.chars().all(|c| c.is_ascii_alphabetic()));
        let t = SimpleTokens::new(Duration::from_millis(200));
        let a = t.assign(&prefix, 42, "alice");
        assert_eq!(SimpleTokens::index_of(&a), Some(42));
        assert_eq!(SimpleTokens::index_of("nodot"), None);
        assert_eq!(SimpleTokens::index_of("a.b.c"), None);
        assert_eq!(t.user_of(&a).as_deref(), Some("alice"));
        assert_eq!(t.user_of("forged.42"), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.user_of(&a), None, "expired");
        let b = t.assign("x", 43, "bob");
        t.invalidate_user("bob");
        assert_eq!(t.user_of(&b), None);
    }
}
