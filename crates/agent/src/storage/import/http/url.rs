//! Source URLs: parsed into the parts a connection needs, and `Location` headers resolved
//! against them (RFC 3986 reference resolution, enough for redirects).

use super::ImportError;

/// A parsed http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Url {
    pub https: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: String,
    pub path: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Self, ImportError> {
        let bad = |why: &str| ImportError::InvalidUrl {
            url: text.to_string(),
            why: why.to_string(),
        };
        let uri: http::Uri = text
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the URL must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; give them as basic-auth credentials",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }

    pub fn text(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.path
        )
    }

    pub fn same_origin(&self, other: &Url) -> bool {
        self.https == other.https && self.host == other.host && self.port == other.port
    }

    /// Resolves a `Location` header against this URL.
    pub fn join(&self, location: &str) -> Result<Url, ImportError> {
        let scheme = if self.https { "https" } else { "http" };
        let absolute = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{}", self.authority, without_dots(location))
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            let joined = without_dots(&format!("{dir}{location}"));
            format!("{scheme}://{}{joined}", self.authority)
        };
        Url::parse(&absolute)
    }
}

/// `path` (absolute, maybe with a query) with its `.` and `..` segments resolved.
fn without_dots(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        // A path ending in `.` or `..` names a directory.
        if last && (*segment == "." || *segment == "..") {
            out.push("");
        }
    }
    let mut text = format!("/{}", out.join("/"));
    if let Some(q) = query {
        text.push('?');
        text.push_str(q);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://[::1]:8443/a/b.img?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.https), ("::1", 8443, true));
        assert_eq!(u.path, "/a/b.img?x=1");
        assert_eq!(
            u.join("c.img").unwrap().text(),
            "https://[::1]:8443/a/c.img"
        );
        assert_eq!(u.join("/d").unwrap().text(), "https://[::1]:8443/d");
        assert_eq!(
            u.join("../c.img").unwrap().text(),
            "https://[::1]:8443/c.img"
        );
        assert_eq!(
            u.join("./x/../y?q=1").unwrap().text(),
            "https://[::1]:8443/a/y?q=1"
        );
        assert_eq!(u.join("/p/../../q").unwrap().text(), "https://[::1]:8443/q");
        assert_eq!(u.join("http://other/e").unwrap().text(), "http://other/e");
        let plain = Url::parse("http://example.com").unwrap();
        assert_eq!((plain.port, plain.path.as_str()), (80, "/"));
        assert!(!plain.same_origin(&u));
        for bad in [
            "ftp://x/y",
            "http://user:pw@host/",
            "/just/a/path",
            "nonsense",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
