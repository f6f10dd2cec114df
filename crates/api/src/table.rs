//! `Table` responses (`meta.k8s.io/v1`): what kubectl asks for with `Accept: ...;as=Table`, and what
//! `vmo get` prints. One definition of each kind's columns serves both.

use crate::kinds::KindInfo;
use crate::object::Object;
use serde_json::{json, Value};

/// Builds a Table of `objects` with the kind's printer columns.
pub fn table(
    kind: &KindInfo,
    objects: &[Object],
    resource_version: &str,
    continue_token: &str,
) -> Value {
    let columns: Vec<Value> = kind
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": if c.kind == "date" { "string" } else { c.kind },
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(kind, o)).collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if !continue_token.is_empty() {
        metadata["continue"] = json!(continue_token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// One row: the cells and the object's metadata (as PartialObjectMetadata).
pub fn row(kind: &KindInfo, object: &Object) -> Value {
    let cells: Vec<Value> = kind.columns.iter().map(|c| (c.cell)(object)).collect();
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object.metadata,
        }
    })
}
