//! Writing a pin into a configuration file, keeping its comments and layout.

use palisade_config::LaunchPin;
use toml_edit::{DocumentMut, Item, Table, value};

/// Sets `upstreams.<name>.pin` in `text` to `pin` (replacing any pin there)
/// and returns the new text. Everything else in the file is kept as written.
/// `note` becomes a comment line above the pin.
pub fn write_pin(text: &str, upstream: &str, pin: &LaunchPin, note: Option<&str>) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let ups = doc
        .get_mut("upstreams")
        .ok_or_else(|| "the file has no [upstreams]".to_string())?;
    let up = ups
        .get_mut(upstream)
        .ok_or_else(|| format!("no upstream {upstream:?} in the file"))?;
    match up {
        Item::Table(t) => {
            t.remove("pin");
            let mut p = pin_table(pin);
            let mut prefix = String::from("\n");
            if let Some(n) = note {
                for line in n.lines() {
                    prefix.push_str(&format!("# {line}\n"));
                }
            }
            // The comment goes on the first table printed.
            if p.is_empty() {
                p.decor_mut().set_prefix(prefix);
            } else if let Some((_, Item::Table(first))) = p.iter_mut().next() {
                first.decor_mut().set_prefix(prefix);
            } else {
                p.decor_mut().set_prefix(prefix);
            }
            // Keep the pin right after its upstream when the file is printed.
            let pos = t.position();
            if let Some(pos) = pos {
                p.set_position(Some(pos));
                for (_, item) in p.iter_mut() {
                    if let Item::Table(sub) = item {
                        sub.set_position(Some(pos));
                    }
                }
            }
            t.insert("pin", Item::Table(p));
        }
        Item::Value(toml_edit::Value::InlineTable(t)) => {
            t.remove("pin");
            let inline = pin_table(pin).into_inline_table();
            t.insert("pin", toml_edit::Value::InlineTable(inline));
        }
        _ => return Err(format!("upstreams.{upstream} is not a table")),
    }
    Ok(doc.to_string())
}

fn pin_table(pin: &LaunchPin) -> Table {
    let mut t = Table::new();
    t.set_implicit(true);
    if let Some(e) = &pin.executable {
        t.insert("executable", value(e.as_str()));
        t.set_implicit(false);
    }
    if let Some(n) = &pin.npm {
        let mut s = Table::new();
        s.insert("package", value(n.package.as_str()));
        s.insert("version", value(n.version.as_str()));
        s.insert("integrity", value(n.integrity.as_str()));
        s.insert("prefix", value(n.prefix.display().to_string()));
        s.insert("tree", value(n.tree.as_str()));
        t.insert("npm", Item::Table(s));
    }
    if let Some(p) = &pin.pypi {
        let mut s = Table::new();
        s.insert("package", value(p.package.as_str()));
        s.insert("version", value(p.version.as_str()));
        s.insert("wheel", value(p.wheel.as_str()));
        s.insert("venv", value(p.venv.display().to_string()));
        s.insert("tree", value(p.tree.as_str()));
        t.insert("pypi", Item::Table(s));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::{Config, NpmPin, Transport};

    fn npm_pin() -> LaunchPin {
        LaunchPin {
            executable: Some(format!("sha256:{}", "a".repeat(64))),
            npm: Some(NpmPin {
                package: "@s/p".into(),
                version: "1.2.3".into(),
                integrity:
                    "sha512-kKaFkyAh6oipvc9+EAbJ552JafnMnOq5nzmzWkp1jJdBhTAAGpmIpWihUG1+rfNhmEFM98gUZDdCHCDD4v6a7Q=="
                        .into(),
                prefix: "/opt/mcp/p".into(),
                tree: format!("sha256:{}", "b".repeat(64)),
            }),
            pypi: None,
        }
    }

    const FILE: &str = "# Palisade\n[server]\nlisten = \"127.0.0.1:0\" # loopback\n\n# the filesystem server\n[upstreams.fs]\ntransport = \"stdio\"\ncommand = \"node\" # from PATH\nargs = [\"x.js\"]\n\n[upstreams.other]\ntransport = \"stdio\"\ncommand = \"true\"\n";

    fn pin_of(text: &str, name: &str) -> Option<LaunchPin> {
        let c = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        match &c.upstreams[name].get_ref().transport {
            Transport::Stdio(s) => s.pin.clone(),
            Transport::Http(_) => None,
        }
    }

    #[test]
    fn keeps_comments_and_round_trips() {
        let out = write_pin(FILE, "fs", &npm_pin(), Some("recorded by a test")).unwrap();
        for kept in [
            "# Palisade",
            "# loopback",
            "# the filesystem server",
            "# from PATH",
            "[upstreams.other]",
        ] {
            assert!(out.contains(kept), "{kept} lost:\n{out}");
        }
        assert!(out.contains("# recorded by a test"), "{out}");
        assert_eq!(pin_of(&out, "fs"), Some(npm_pin()));
        assert_eq!(pin_of(&out, "other"), None);
        // The pin follows its upstream, before the next one.
        assert!(
            out.find("[upstreams.fs.pin]").unwrap() < out.find("[upstreams.other]").unwrap(),
            "{out}"
        );
        // Replacing a pin leaves one pin.
        let mut p2 = npm_pin();
        p2.executable = None;
        let again = write_pin(&out, "fs", &p2, None).unwrap();
        assert_eq!(pin_of(&again, "fs"), Some(p2));
        assert_eq!(again.matches("[upstreams.fs.pin.npm]").count(), 1, "{again}");
    }

    #[test]
    fn inline_upstreams_and_errors() {
        let text = "[upstreams]\nfs = { transport = \"stdio\", command = \"node\" } # inline\n";
        let out = write_pin(text, "fs", &npm_pin(), None).unwrap();
        assert!(out.contains("# inline"));
        assert_eq!(pin_of(&out, "fs"), Some(npm_pin()));
        assert!(write_pin(text, "nope", &npm_pin(), None).unwrap_err().contains("nope"));
        assert!(write_pin("x = [", "fs", &npm_pin(), None).is_err());
    }
}
