//! `{{ NAME }}` substitution of policy constants into policy strings.

use indexmap::IndexMap;

/// Replaces every `{{ NAME }}` whose NAME is an identifier with the constant's
/// text. Returns the names that are not constants as the error; text between
/// braces that is not an identifier is left alone (Python dict literals).
pub fn substitute(text: &str, constants: &IndexMap<String, serde_json::Value>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = after[..end].trim();
        if is_identifier(name) {
            match constants.get(name) {
                Some(value) => out.push_str(&constant_text(value)),
                None => {
                    if !missing.iter().any(|m| m == name) {
                        missing.push(name.to_string());
                    }
                }
            }
        } else {
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// A constant as it reads inside a query or rule: numbers and strings bare.
pub fn constant_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn constants() -> IndexMap<String, serde_json::Value> {
        [("UPPER".to_string(), json!(70)), ("NAME".to_string(), json!("web"))]
            .into_iter()
            .collect()
    }

    #[test]
    fn substitutes_with_and_without_spaces() {
        let c = constants();
        assert_eq!(substitute("x > {{UPPER}}", &c).unwrap(), "x > 70");
        assert_eq!(substitute("{{ NAME }}-{{UPPER }}", &c).unwrap(), "web-70");
    }

    #[test]
    fn reports_every_unknown_constant_once() {
        let c = constants();
        assert_eq!(
            substitute("{{A}} {{B}} {{A}}", &c).unwrap_err(),
            vec!["A".to_string(), "B".to_string()]
        );
    }

    #[test]
    fn leaves_non_identifiers_and_unclosed_braces() {
        let c = constants();
        assert_eq!(substitute("d = {{'a': 1}}", &c).unwrap(), "d = {{'a': 1}}");
        assert_eq!(substitute("open {{ UPPER", &c).unwrap(), "open {{ UPPER");
    }
}
