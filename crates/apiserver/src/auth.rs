//! Bearer-token authentication. Tokens live in `DIR/tokens` (one per line, `TOKEN,USER`); `vmo up`
//! creates an admin token on first start. Comparisons take constant time.

use std::fs;
use std::path::Path;

/// A user a token maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
}

/// The known tokens.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: Vec<(String, User)>,
}

impl Authenticator {
    /// Accepts exactly these `(token, user)` pairs.
    pub fn new(tokens: Vec<(String, String)>) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .map(|(t, name)| (t, User { name }))
                .collect(),
        }
    }

    /// Reads the token file, creating it with a fresh admin token when missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<(Self, String)> {
        if !path.exists() {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            crate::pki::write_private(path, format!("{token},admin\n").as_bytes())
                .map_err(std::io::Error::other)?;
        }
        let text = fs::read_to_string(path)?;
        let tokens: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| match l.split_once(',') {
                Some((t, u)) => (t.trim().to_string(), u.trim().to_string()),
                None => (l.trim().to_string(), "admin".to_string()),
            })
            .collect();
        let admin = tokens
            .iter()
            .find(|(_, u)| u == "admin")
            .or(tokens.first())
            .map(|(t, _)| t.clone())
            .ok_or_else(|| std::io::Error::other(format!("{} holds no token", path.display())))?;
        Ok((Self::new(tokens), admin))
    }

    /// The user behind an `Authorization` header value, if it carries a known bearer token.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<&User> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.tokens
            .iter()
            .find(|(known, _)| constant_time_eq(known.as_bytes(), token.as_bytes()))
            .map(|(_, user)| user)
    }
}

/// The websocket subprotocol prefix that carries a bearer token, as Kubernetes accepts it:
/// browsers cannot set `Authorization` on a websocket, so the UI's consoles offer
/// `base64url.bearer.authorization.k8s.io.<token, base64url without padding>`.
pub const WEBSOCKET_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// `Bearer <token>` from a websocket request's subprotocols, if one carries a token.
pub fn websocket_bearer(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine;
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WEBSOCKET_BEARER_PREFIX))
        .and_then(|encoded| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|token| format!("Bearer {token}"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_subprotocol_carries_a_bearer_token() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "sec-websocket-protocol",
            "plain.kubevirt.io, base64url.bearer.authorization.k8s.io.c2VjcmV0"
                .parse()
                .unwrap(),
        );
        assert_eq!(websocket_bearer(&headers).as_deref(), Some("Bearer secret"));
        headers.insert(
            "sec-websocket-protocol",
            "plain.kubevirt.io".parse().unwrap(),
        );
        assert_eq!(websocket_bearer(&headers), None);
    }

    #[test]
    fn only_known_bearer_tokens_pass() {
        let auth = Authenticator::new(vec![("secret".into(), "admin".into())]);
        assert_eq!(
            auth.authenticate(Some("Bearer secret")).unwrap().name,
            "admin"
        );
        assert!(auth.authenticate(Some("Bearer wrong")).is_none());
        assert!(auth.authenticate(Some("Basic secret")).is_none());
        assert!(auth.authenticate(None).is_none());
    }
}
