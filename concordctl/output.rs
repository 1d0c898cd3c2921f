//! How results are printed: `simple` (one line per item, as etcdctl's simple output), `json`
//! (one JSON document per result, or per streamed item), or `table` (aligned columns).

use serde_json::Value;

/// The `-w` output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Plain lines.
    Simple,
    /// JSON documents.
    Json,
    /// Aligned columns with a header.
    Table,
}

/// Prints rows: simple as space-separated lines, json as `document`, table with `header`.
pub fn rows(format: Format, header: &[&str], rows: &[Vec<String>], document: &Value) {
    match format {
        Format::Json => println!("{document}"),
        Format::Simple => {
            for row in rows {
                println!("{}", row.join(" "));
            }
        }
        Format::Table => print!("{}", table(header, rows)),
    }
}

/// Prints one result: `simple` as given, json as `document`, table as a one-row table.
pub fn one(format: Format, simple: &str, header: &[&str], row: Vec<String>, document: &Value) {
    match format {
        Format::Simple => println!("{simple}"),
        _ => rows(format, header, &[row], document),
    }
}

/// `rows` under `header`, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let rule = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = rule.clone();
    out += &line(header.to_vec());
    out += &rule;
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out += &rule;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![vec!["a1".to_string(), "10.0.0.1:80".to_string()]];
        assert_eq!(
            table(&["ID", "ADDR"], &rows),
            "+----+-------------+\n| ID | ADDR        |\n+----+-------------+\n| a1 | 10.0.0.1:80 |\n+----+-------------+\n"
        );
    }
}
