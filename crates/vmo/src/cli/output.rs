//! Printing objects: kubectl-style tables from the server's Table responses, JSON, YAML and names.

use serde_json::Value;
use vmo_api::{KindInfo, Object};

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
}

/// Aligns rows into columns separated by three spaces, as kubectl does.
pub fn render_rows(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() => "<none>".into(),
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// Turns a Table response into rows: a header, then one row per object.
pub fn table_rows(table: &Value, wide: bool, with_namespace: bool) -> Vec<Vec<String>> {
    let columns: Vec<(usize, String)> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| wide || c["priority"].as_u64().unwrap_or(0) == 0)
        .map(|(i, c)| (i, c["name"].as_str().unwrap_or("").to_uppercase()))
        .collect();
    let mut header: Vec<String> = columns.iter().map(|(_, n)| n.clone()).collect();
    if with_namespace {
        header.insert(0, "NAMESPACE".into());
    }
    let mut rows = vec![header];
    for row in table["rows"].as_array().into_iter().flatten() {
        let mut cells: Vec<String> = columns
            .iter()
            .map(|(i, _)| cell_text(&row["cells"][*i]))
            .collect();
        if with_namespace {
            let ns = row["object"]["metadata"]["namespace"]
                .as_str()
                .unwrap_or("");
            cells.insert(0, ns.to_string());
        }
        rows.push(cells);
    }
    rows
}

/// Objects as JSON or YAML: one named object as itself, a listing (or several names) as a `List`,
/// as kubectl prints them.
pub fn document(objects: &[Object], single: bool, yaml: bool) -> String {
    let value = if single && objects.len() == 1 {
        objects[0].to_value()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": objects})
    };
    if yaml {
        serde_yaml_ng::to_string(&value).unwrap_or_default()
    } else {
        serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
    }
}

/// `kind.group/name`, as `-o name` prints.
pub fn name_of(kind: &KindInfo, obj: &Object) -> String {
    format!("{}/{}", super::kind_label(kind), obj.metadata.name)
}
