//! JWT tokens (`--auth-token jwt,pub-key=<file>,priv-key=<file>,
//! sign-method=<alg>,ttl=<duration>`), etcd's: a token carries the user
//! name, the auth revision it was made at and its expiry, signed with the
//! private key; any member with the public key checks it, and nothing is
//! kept in memory. A token made before the auth store changed is refused
//! for key operations ("revision of auth store is old") and the client
//! logs in again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// Why `--auth-token jwt,...` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("--auth-token: bad option {0:?} (want key=value)")]
    BadOption(String),
    #[error("--auth-token: option {0} given twice")]
    Duplicate(String),
    #[error("--auth-token: unknown option {0:?}")]
    Unknown(String),
    #[error("--auth-token jwt: sign-method is required")]
    NoMethod,
    #[error("--auth-token jwt: sign-method {0:?} is not supported (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, HS256, HS384, HS512)")]
    Method(String),
    #[error("--auth-token jwt: ttl {0:?}: {1}")]
    Ttl(String, String),
    #[error("--auth-token jwt: a {0} key is required")]
    MissingKey(&'static str),
    #[error("--auth-token jwt: {0}: {1}")]
    Key(String, String),
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

pub struct JwtTokens {
    alg: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("alg", &self.alg)
            .field("signs", &self.encoding.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn read(path: &str) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|e| JwtError::Key(path.to_string(), e.to_string()))
}

impl JwtTokens {
    /// Reads the options after `jwt,` (etcd's format) and the keys they
    /// name.
    pub fn from_options(options: &str) -> Result<JwtTokens, JwtError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = opt
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.contains('='))
                .ok_or_else(|| JwtError::BadOption(opt.to_string()))?;
            if pairs.iter().any(|(x, _)| x == k) {
                return Err(JwtError::Duplicate(k.to_string()));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        for (k, _) in &pairs {
            if !["pub-key", "priv-key", "sign-method", "ttl"].contains(&k.as_str()) {
                return Err(JwtError::Unknown(k.clone()));
            }
        }
        let method = get("sign-method").ok_or(JwtError::NoMethod)?;
        let alg = match method.as_str() {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            other => return Err(JwtError::Method(other.to_string())),
        };
        let ttl = match get("ttl") {
            None => Duration::from_secs(300),
            Some(t) => {
                humantime::parse_duration(&t).map_err(|e| JwtError::Ttl(t, e.to_string()))?
            }
        };
        let key_err = |path: &str| {
            let path = path.to_string();
            move |e: jsonwebtoken::errors::Error| JwtError::Key(path.clone(), e.to_string())
        };
        let (encoding, decoding) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let path = get("priv-key").ok_or(JwtError::MissingKey("priv-key"))?;
                let secret = read(&path)?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let public = get("pub-key").ok_or(JwtError::MissingKey("pub-key"))?;
                let decoding =
                    DecodingKey::from_ec_pem(&read(&public)?).map_err(key_err(&public))?;
                let encoding = match get("priv-key") {
                    Some(p) => Some(EncodingKey::from_ec_pem(&read(&p)?).map_err(key_err(&p))?),
                    None => None,
                };
                (encoding, decoding)
            }
            _ => {
                let public = get("pub-key").ok_or(JwtError::MissingKey("pub-key"))?;
                let decoding =
                    DecodingKey::from_rsa_pem(&read(&public)?).map_err(key_err(&public))?;
                let encoding = match get("priv-key") {
                    Some(p) => Some(EncodingKey::from_rsa_pem(&read(&p)?).map_err(key_err(&p))?),
                    None => None,
                };
                (encoding, decoding)
            }
        };
        let t = JwtTokens {
            alg,
            encoding,
            decoding,
            ttl,
        };
        // A key pair that does not belong together is refused now rather
        // than at the first login.
        if t.encoding.is_some() {
            let probe = t
                .sign("probe", 0)
                .map_err(|e| JwtError::Key("priv-key".into(), e))?;
            if t.verify(&probe).is_none() {
                return Err(JwtError::Key(
                    "priv-key".into(),
                    "does not match pub-key".into(),
                ));
            }
        }
        Ok(t)
    }

    /// A token for `user` at auth revision `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let Some(key) = &self.encoding else {
            return Err("auth: token signing attempted with verify-only key".into());
        };
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + self.ttl.as_secs().max(1);
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key).map_err(|e| e.to_string())
    }

    /// The user and auth revision of a valid token (signed with this key
    /// and method, not expired).
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }

    #[test]
    fn options_are_read_as_etcd_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret_file(dir.path(), "k", b"a secret");
        let t =
            JwtTokens::from_options(&format!("priv-key={key},sign-method=HS256,ttl=1m")).unwrap();
        assert_eq!(t.ttl, Duration::from_secs(60));
        assert!(matches!(
            JwtTokens::from_options("sign-method=HS256,sign-method=HS384"),
            Err(JwtError::Duplicate(_))
        ));
        assert!(matches!(
            JwtTokens::from_options("priv-key"),
            Err(JwtError::BadOption(_))
        ));
        assert!(matches!(
            JwtTokens::from_options(&format!("priv-key={key}")),
            Err(JwtError::NoMethod)
        ));
        assert!(matches!(
            JwtTokens::from_options(&format!("priv-key={key},sign-method=ES512")),
            Err(JwtError::Method(_))
        ));
        assert!(matches!(
            JwtTokens::from_options(&format!("priv-key={key},sign-method=HS256,colour=red")),
            Err(JwtError::Unknown(_))
        ));
    }

    #[test]
    fn tokens_carry_user_and_revision_and_refuse_tampering_and_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = secret_file(dir.path(), "a", b"key a");
        let b = secret_file(dir.path(), "b", b"key b");
        let ta = JwtTokens::from_options(&format!("priv-key={a},sign-method=HS256")).unwrap();
        let tb = JwtTokens::from_options(&format!("priv-key={b},sign-method=HS256")).unwrap();
        let token = ta.sign("alice", 7).unwrap();
        assert_eq!(ta.verify(&token), Some(("alice".into(), 7)));
        assert_eq!(tb.verify(&token), None, "another key");
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert_eq!(ta.verify(&parts.join(".")), None, "tampered");
        let short =
            JwtTokens::from_options(&format!("priv-key={a},sign-method=HS256,ttl=1s")).unwrap();
        let t = short.sign("bob", 1).unwrap();
        assert!(short.verify(&t).is_some());
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(short.verify(&t), None, "expired");
    }
}
