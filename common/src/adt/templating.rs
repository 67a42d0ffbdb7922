//! `{{ NAME }}` substitution of policy constants into policy strings.

/// The text with every `{{ NAME }}` replaced, and the names that had no value.
#[derive(Debug, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Names `lookup` did not know, each once; they rendered empty, as
    /// MiCADO's Jinja rendering does.
    pub missing: Vec<String>,
}

/// Replaces every `{{ NAME }}` whose NAME is an identifier with
/// `lookup(NAME)`, or with nothing when it has no value. Text between
/// braces that is not an identifier is left alone (Python dict literals).
pub fn render(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Rendered {
    let mut out = String::with_capacity(text.len());
    let mut missing: Vec<String> = Vec::new();
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
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None if !missing.iter().any(|m| m == name) => missing.push(name.to_string()),
                None => {}
            }
        } else {
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Rendered { text: out, missing }
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
    use indexmap::IndexMap;
    use serde_json::json;

    fn lookup(name: &str) -> Option<String> {
        let c: IndexMap<String, serde_json::Value> = [("UPPER".to_string(), json!(70)), ("NAME".to_string(), json!("web"))].into_iter().collect();
        c.get(name).map(constant_text)
    }

    #[test]
    fn substitutes_with_and_without_spaces() {
        assert_eq!(render("x > {{UPPER}}", lookup).text, "x > 70");
        assert_eq!(render("{{ NAME }}-{{UPPER }}", lookup).text, "web-70");
    }

    #[test]
    fn unknown_names_render_empty_and_are_reported_once() {
        let r = render("a{{A}}b {{B}} {{A}}", lookup);
        assert_eq!(r.text, "ab  ");
        assert_eq!(r.missing, vec!["A".to_string(), "B".to_string()]);
    }

    #[test]
    fn leaves_non_identifiers_and_unclosed_braces() {
        assert_eq!(render("d = {{'a': 1}}", lookup).text, "d = {{'a': 1}}");
        assert_eq!(render("open {{ UPPER", lookup).text, "open {{ UPPER");
    }
}
