//! `vmo describe KIND NAME`: metadata, spec and status in readable form, then the object's events.

use super::{output, Context};
use clap::Args;
use serde_json::Value;
use vmo_client::encode_query;

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// Kind and name.
    #[arg(required = true, num_args = 2)]
    pub args: Vec<String>,
}

fn indent_yaml(value: &Value, spaces: usize) -> String {
    let text = serde_yaml_ng::to_string(value).unwrap_or_default();
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(spaces)))
        .collect()
}

fn map_line(label: &str, map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return format!("{label:<13}<none>\n");
    }
    let mut out = String::new();
    for (i, (k, v)) in map.iter().enumerate() {
        let head = if i == 0 {
            format!("{label:<13}")
        } else {
            " ".repeat(13)
        };
        out.push_str(&format!("{head}{k}={v}\n"));
    }
    out
}

pub async fn run(ctx: &Context, args: DescribeArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let kind = ctx.kind(&args.args[0])?;
    let namespace = if kind.namespaced {
        ctx.namespace(&client)
    } else {
        String::new()
    };
    let obj = client.get(&kind, &namespace, &args.args[1]).await?;
    let m = &obj.metadata;
    let mut out = String::new();
    out.push_str(&format!("{:<13}{}\n", "Name:", m.name));
    if kind.namespaced {
        out.push_str(&format!("{:<13}{}\n", "Namespace:", m.namespace));
    }
    out.push_str(&map_line("Labels:", &m.labels));
    let annotations: std::collections::BTreeMap<String, String> = m
        .annotations
        .iter()
        .filter(|(k, _)| *k != "kubectl.kubernetes.io/last-applied-configuration")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.push_str(&map_line("Annotations:", &annotations));
    out.push_str(&format!("{:<13}{}\n", "API Version:", obj.api_version));
    out.push_str(&format!("{:<13}{}\n", "Kind:", obj.kind));
    out.push_str("Metadata:\n");
    out.push_str(&format!(
        "  Creation Timestamp:  {}\n",
        m.creation_timestamp.as_deref().unwrap_or("")
    ));
    if let Some(d) = &m.deletion_timestamp {
        out.push_str(&format!("  Deletion Timestamp:  {d}\n"));
    }
    out.push_str(&format!("  Generation:          {}\n", m.generation));
    out.push_str(&format!("  Resource Version:    {}\n", m.resource_version));
    out.push_str(&format!("  UID:                 {}\n", m.uid));
    if !m.finalizers.is_empty() {
        out.push_str(&format!(
            "  Finalizers:          {}\n",
            m.finalizers.join(", ")
        ));
    }
    for r in &m.owner_references {
        out.push_str(&format!(
            "  Owned By:            {} {} ({})\n",
            r.kind, r.name, r.uid
        ));
    }
    for (key, value) in &obj.body {
        let title = match key.as_str() {
            "spec" => "Spec".to_string(),
            "status" => "Status".to_string(),
            other => {
                let mut c = other.chars();
                c.next()
                    .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                    .unwrap_or_default()
            }
        };
        if key == "data" && obj.kind == "Secret" {
            out.push_str("Data:\n");
            for (k, v) in value.as_object().into_iter().flatten() {
                let len = v.as_str().map(|s| s.len() * 3 / 4).unwrap_or(0);
                out.push_str(&format!("  {k}:  ~{len} bytes\n"));
            }
            continue;
        }
        match value {
            Value::Object(_) | Value::Array(_) => {
                out.push_str(&format!("{title}:\n"));
                out.push_str(&indent_yaml(value, 2));
            }
            scalar => out.push_str(&format!(
                "{:<13}{}\n",
                format!("{title}:"),
                scalar
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or(scalar.to_string())
            )),
        }
    }
    print!("{out}");
    let events_kind = ctx.kind("events")?;
    // Events about the object, and for a VM also about its instance (which shares its name).
    let selector = format!("involvedObject.name={}", m.name);
    let events = client
        .list(
            &events_kind,
            if namespace.is_empty() {
                None
            } else {
                Some(&namespace)
            },
            &format!("fieldSelector={}", encode_query(&selector)),
        )
        .await?;
    let instance_kind = (obj.kind == "VirtualMachine").then_some("VirtualMachineInstance");
    let mut events: Vec<vmo_api::Object> = events
        .items
        .into_iter()
        .filter(|e| {
            let kind = e
                .body
                .get("involvedObject")
                .and_then(|i| i.get("kind"))
                .and_then(Value::as_str);
            kind == Some(obj.kind.as_str()) || kind.is_some() && kind == instance_kind
        })
        .collect();
    events.sort_by_key(|e| {
        e.body
            .get("lastTimestamp")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    if events.is_empty() {
        println!("Events:      <none>");
    } else {
        println!("Events:");
        let mut rows = vec![vec![
            "  Type".to_string(),
            "Reason".into(),
            "Age".into(),
            "From".into(),
            "Message".into(),
        ]];
        for e in events {
            let last = e
                .body
                .get("lastTimestamp")
                .and_then(Value::as_str)
                .or(e.metadata.creation_timestamp.as_deref())
                .map(str::to_string);
            rows.push(vec![
                format!(
                    "  {}",
                    e.body.get("type").and_then(Value::as_str).unwrap_or("")
                ),
                e.body
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                vmo_api::meta::human_age(last.as_deref()),
                e.body
                    .get("source")
                    .and_then(|s| s.get("component"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                e.body
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ]);
        }
        print!("{}", output::render_rows(&rows));
    }
    Ok(())
}
