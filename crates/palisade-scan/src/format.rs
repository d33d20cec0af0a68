//! Output formats shared by `palisade scan`: one JSON object per scanned
//! item, a human summary, and SARIF 2.1.0.

use serde_json::{Value, json};

use crate::{Report, Severity};

/// One scanned item with its id.
pub struct Item<'a> {
    pub id: &'a Value,
    pub report: &'a Report,
}

/// `{"id", "verdict", "score", "findings": [...]}`.
pub fn item_json(item: &Item) -> Value {
    json!({
        "id": item.id,
        "verdict": item.report.verdict().as_str(),
        "score": item.report.score(),
        "findings": item.report.findings,
    })
}

/// A short human-readable report.
pub fn text(items: &[Item]) -> String {
    let mut out = String::new();
    for it in items {
        let id = match it.id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "{id}: {} (score {:.2})\n",
            it.report.verdict().as_str(),
            it.report.score()
        ));
        for f in &it.report.findings {
            out.push_str(&format!(
                "  [{}] {} {} at {} bytes {}..{}: {}\n",
                f.severity.as_str(),
                f.category.as_str(),
                f.rule,
                if f.pointer.is_empty() { "/" } else { &f.pointer },
                f.start,
                f.end,
                f.message
            ));
        }
    }
    out
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Low => "note",
        Severity::Medium => "warning",
        Severity::High | Severity::Critical => "error",
    }
}

/// SARIF 2.1.0 with one result per finding; the location is the input file
/// plus a logical location `id#pointer`.
pub fn sarif(items: &[Item], artifact: &str) -> Value {
    let mut rules: Vec<&str> = items
        .iter()
        .flat_map(|i| i.report.findings.iter().map(|f| f.rule))
        .collect();
    rules.sort_unstable();
    rules.dedup();
    let results: Vec<Value> = items
        .iter()
        .flat_map(|it| {
            it.report.findings.iter().map(move |f| {
                let id = match it.id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                json!({
                    "ruleId": f.rule,
                    "level": level(f.severity),
                    "message": {"text": f.message},
                    "locations": [{
                        "physicalLocation": {"artifactLocation": {"uri": artifact}},
                        "logicalLocations": [{"fullyQualifiedName": format!("{id}#{}", f.pointer), "kind": "member"}]
                    }],
                    "properties": {
                        "category": f.category.as_str(),
                        "severity": f.severity.as_str(),
                        "pointer": f.pointer,
                        "start": f.start,
                        "end": f.end,
                        "score": f.score,
                    }
                })
            })
        })
        .collect();
    sarif_log(
        rules.iter().map(|r| json!({"id": r})).collect(),
        results,
        serde_json::Map::new(),
    )
}

/// A SARIF 2.1.0 log with one run of the `palisade` tool: its rule
/// descriptors, its results, and any further members of the run.
pub fn sarif_log(rules: Vec<Value>, results: Vec<Value>, run_extra: serde_json::Map<String, Value>) -> Value {
    let mut run = json!({
        "tool": {"driver": {
            "name": "palisade",
            "informationUri": "https://github.com/palisade-mcp/palisade",
            "rules": rules
        }},
        "results": results
    });
    if let Some(r) = run.as_object_mut() {
        r.extend(run_extra);
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [run]
    })
}
