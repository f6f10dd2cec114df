//! URL paths to routes, the Kubernetes way: `/api/v1/...`, `/apis/GROUP/VERSION/...`, with optional
//! `namespaces/NS/`, then `PLURAL[/NAME[/SUBRESOURCE]]`; plus discovery and OpenAPI endpoints.

use std::collections::HashMap;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(String),
    Resources {
        group: String,
        version: String,
    },
    OpenApiV2,
    Metrics,
    OpenApiV3Root,
    OpenApiV3 {
        group_version: String,
    },
    Resource(ResourcePath),
    /// `/ui` and everything under it: the web UI's files.
    Ui(String),
    /// `/api/v1/nodes/NAME/proxy/PATH`: a GET passed to the node's agent.
    NodeProxy {
        node: String,
        path: String,
    },
    NotFound,
}

/// A resource path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Subresources of a namespace (the third segment under `/api/v1/namespaces/NAME/`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Parses a request path.
pub fn parse(path: &str) -> Route {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segments.as_slice() {
        ["version"] => Route::Version,
        ["ui", rest @ ..] => Route::Ui(rest.join("/")),
        ["healthz"] | ["livez"] | ["readyz"] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group(group.to_string()),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["metrics"] => Route::Metrics,
        ["openapi", "v3"] => Route::OpenApiV3Root,
        ["openapi", "v3", rest @ ..] => Route::OpenApiV3 {
            group_version: rest.join("/"),
        },
        ["api", "v1", "nodes", node, "proxy", rest @ ..] => Route::NodeProxy {
            node: node.to_string(),
            path: rest.join("/"),
        },
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => Route::NotFound,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let base = ResourcePath {
        group: group.into(),
        version: version.into(),
        ..Default::default()
    };
    let path = match rest {
        [] => {
            return Route::Resources {
                group: group.into(),
                version: version.into(),
            }
        }
        ["namespaces", ns, plural, tail @ ..] if !NAMESPACE_SUBRESOURCES.contains(plural) => {
            if tail.len() > 2 {
                return Route::NotFound;
            }
            ResourcePath {
                namespace: Some(ns.to_string()),
                plural: plural.to_string(),
                name: tail.first().map(|s| s.to_string()),
                subresource: tail.get(1).map(|s| s.to_string()),
                ..base
            }
        }
        [plural, tail @ ..] => {
            if tail.len() > 2 {
                return Route::NotFound;
            }
            ResourcePath {
                plural: plural.to_string(),
                name: tail.first().map(|s| s.to_string()),
                subresource: tail.get(1).map(|s| s.to_string()),
                ..base
            }
        }
    };
    Route::Resource(path)
}

/// Parses a query string, decoding `%XX` and `+`.
pub fn query(raw: Option<&str>) -> HashMap<String, String> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` as space; invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths() {
        let r = parse("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1/status");
        let Route::Resource(p) = r else {
            panic!("{r:?}")
        };
        assert_eq!(p.group, "kubevirt.io");
        assert_eq!(p.namespace.as_deref(), Some("default"));
        assert_eq!(p.plural, "virtualmachines");
        assert_eq!(p.name.as_deref(), Some("vm1"));
        assert_eq!(p.subresource.as_deref(), Some("status"));

        let Route::Resource(ns) = parse("/api/v1/namespaces/prod") else {
            panic!()
        };
        assert_eq!(
            (ns.plural.as_str(), ns.name.as_deref()),
            ("namespaces", Some("prod"))
        );
        let Route::Resource(fin) = parse("/api/v1/namespaces/prod/finalize") else {
            panic!()
        };
        assert_eq!(fin.subresource.as_deref(), Some("finalize"));
        let Route::Resource(all) = parse("/apis/kubevirt.io/v1/virtualmachines") else {
            panic!()
        };
        assert_eq!((all.namespace, all.name), (None, None));
        assert_eq!(
            parse("/apis/kubevirt.io/v1"),
            Route::Resources {
                group: "kubevirt.io".into(),
                version: "v1".into()
            }
        );
        assert_eq!(parse("/api/v1/namespaces/a/b/c/d/e"), Route::NotFound);
    }

    #[test]
    fn queries_decode() {
        let q = query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1&bad=%zz",
        ));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["bad"], "%zz");
    }
}
