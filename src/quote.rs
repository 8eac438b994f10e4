//! Quoting for SQL that patron writes itself (data tests, the duplicate-key scan, the
//! incremental carry-over): identifiers and string literals, so a column or file name
//! with a quote in it stays one token.

/// `name` as a quoted SQL identifier (case kept, `"` doubled).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a SQL string literal (`'` doubled).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_inside_are_doubled() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(literal("O'Brien"), "'O''Brien'");
    }
}
