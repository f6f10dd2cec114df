//! The OpenAPI v3 documents, one per group-version, generated from the kind registry.
//!
//! kubectl reads them to learn that the server validates fields itself (`fieldValidation` on every
//! write operation), and `kubectl explain` reads the schemas. The whole set is committed as
//! `docs/api/openapi-v3.json`; a test keeps that file equal to what the server serves.

use serde_json::{json, Map, Value};
use vmo_api::{KindInfo, Registry};

fn schema_name(k: &KindInfo) -> String {
    let group = if k.group.is_empty() { "core" } else { k.group };
    format!("{group}.{}.{}", k.version, k.kind)
}

fn query_param(name: &str, description: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind}, "uniqueItems": true})
}

fn write_params() -> Vec<Value> {
    vec![
        query_param("dryRun", "When present (All), the write is validated but not persisted.", "string"),
        query_param("fieldManager", "The name of the actor making the change, for managed fields.", "string"),
        query_param(
            "fieldValidation",
            "Ignore, Warn or Strict. vmo keeps unknown fields of known kinds, so all three accept them.",
            "string",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    vec![
        query_param("labelSelector", "Select objects by label.", "string"),
        query_param("fieldSelector", "Select objects by field.", "string"),
        query_param(
            "limit",
            "Return at most this many objects, with a continue token.",
            "integer",
        ),
        query_param("continue", "Continue a paginated list.", "string"),
        query_param(
            "resourceVersion",
            "For watch: stream changes after this version.",
            "string",
        ),
        query_param(
            "watch",
            "Stream ADDED, MODIFIED, DELETED and BOOKMARK events.",
            "boolean",
        ),
        query_param("allowWatchBookmarks", "Send BOOKMARK events.", "boolean"),
        query_param("timeoutSeconds", "End a watch after this long.", "integer"),
    ]
}

fn op(k: &KindInfo, action: &str, summary: String, params: Vec<Value>, with_body: bool) -> Value {
    let schema = json!({"$ref": format!("#/components/schemas/{}", schema_name(k))});
    let mut operation = json!({
        "description": summary,
        "operationId": format!("{action}{}", k.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": k.group, "version": k.version, "kind": k.kind},
    });
    if with_body {
        operation["requestBody"] =
            json!({"content": {"*/*": {"schema": schema}}, "required": true});
    }
    operation
}

fn paths_for(k: &KindInfo) -> Vec<(String, Value)> {
    let base = if k.group.is_empty() {
        format!("/api/{}", k.version)
    } else {
        format!("/apis/{}/{}", k.group, k.version)
    };
    let scope = if k.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let collection = format!("{base}{scope}/{}", k.plural);
    let item = format!("{collection}/{{name}}");
    let mut out = vec![
        (
            collection.clone(),
            json!({
                "get": op(k, "list", format!("list or watch objects of kind {}", k.kind), list_params(), false),
                "post": op(k, "post", format!("create a {}", k.kind), write_params(), true),
            }),
        ),
        (
            item.clone(),
            json!({
                "get": op(k, "get", format!("read the specified {}", k.kind), vec![], false),
                "put": op(k, "put", format!("replace the specified {}", k.kind), write_params(), true),
                "patch": op(k, "patch", format!("partially update the specified {}", k.kind), {
                    let mut p = write_params();
                    p.push(query_param("force", "Take over conflicting fields in server-side apply.", "boolean"));
                    p
                }, true),
                "delete": op(k, "delete", format!("delete a {}", k.kind), vec![
                    query_param("propagationPolicy", "Background, Foreground or Orphan.", "string"),
                    query_param("dryRun", "When present (All), nothing is deleted.", "string"),
                ], false),
            }),
        ),
    ];
    if k.namespaced {
        out.push((
            format!("{base}/{}", k.plural),
            json!({"get": op(k, "list", format!("list or watch objects of kind {} in all namespaces", k.kind), list_params(), false)}),
        ));
    }
    if k.status_subresource {
        out.push((
            format!("{item}/status"),
            json!({
                "get": op(k, "get", format!("read status of the specified {}", k.kind), vec![], false),
                "put": op(k, "put", format!("replace status of the specified {}", k.kind), write_params(), true),
                "patch": op(k, "patch", format!("partially update status of the specified {}", k.kind), write_params(), true),
            }),
        ));
    }
    out
}

fn schema_for(k: &KindInfo) -> Value {
    json!({
        "type": "object",
        "description": format!("{} ({}). Fields vmo does not interpret are kept.", k.kind, k.api_version()),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
        "x-kubernetes-preserve-unknown-fields": true,
        "x-kubernetes-group-version-kind": [{"group": k.group, "version": k.version, "kind": k.kind}],
    })
}

/// The URL key of a group-version in `/openapi/v3` (`api/v1`, `apis/kubevirt.io/v1`).
pub fn group_version_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The document for one group-version.
pub fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let kinds = registry.in_group_version(group, version);
    if kinds.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for k in kinds {
        for (path, item) in paths_for(k) {
            paths.insert(path, item);
        }
        schemas.insert(schema_name(k), schema_for(k));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "vmo", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Every group-version's document, keyed as in `/openapi/v3`: the golden file's content.
pub fn all_documents(registry: &Registry) -> Value {
    let mut out = Map::new();
    for (g, v) in registry.group_versions() {
        if let Some(doc) = document(registry, g, v) {
            out.insert(group_version_key(g, v), doc);
        }
    }
    Value::Object(out)
}

/// `/openapi/v3`: where each group-version's document is.
pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, v) in registry.group_versions() {
        let key = group_version_key(g, v);
        let hash = document(registry, g, v)
            .map(|d| fnv(&d.to_string()))
            .unwrap_or(0);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `/openapi/v2`: a Swagger 2.0 document with no schemas. kubectl up to 1.26 downloads it before
/// `apply` and validates client-side only the kinds it finds there; with none listed it leaves
/// validation to the server, which checks every field (see the v3 documents).
pub fn v2_document(protobuf: bool) -> (Vec<u8>, &'static str) {
    if protobuf {
        // gnostic's openapi_v2.Document: field 1 (swagger) = "2.0", field 2 (info) = {title, version}.
        // Sent as octet-stream: Go's media-type parser rejects the '@' of the type kubectl asks for.
        let version = env!("CARGO_PKG_VERSION").as_bytes();
        let mut info = vec![0x0a, 3];
        info.extend_from_slice(b"vmo");
        info.push(0x12);
        info.push(version.len() as u8);
        info.extend_from_slice(version);
        let mut doc = vec![0x0a, 3];
        doc.extend_from_slice(b"2.0");
        doc.push(0x12);
        doc.push(info.len() as u8);
        doc.extend_from_slice(&info);
        (doc, "application/octet-stream")
    } else {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "vmo", "version": env!("CARGO_PKG_VERSION")},
            "paths": {},
        });
        (
            serde_json::to_vec(&doc).unwrap_or_default(),
            "application/json",
        )
    }
}
