//! Aligned text tables and key/value blocks for the admin commands' human output.

use freight_core::text::printable;

/// A table: a header row and rows of cells, columns padded to their widest cell.
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers, all left-aligned.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            right: vec![false; header.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns at `cols` (numbers).
    pub fn right(mut self, cols: &[usize]) -> Table {
        for &c in cols {
            self.right[c] = true;
        }
        self
    }

    /// Adds a row (missing cells render empty, extra ones are dropped). Control characters
    /// in cells (names and messages come from other hosts) are shown escaped, never sent to
    /// the terminal.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| printable(c)).collect());
    }

    /// The rendered table, or the line `empty` (a hint) when it has no rows.
    pub fn render_or(&self, empty: &str) -> String {
        if self.rows.is_empty() {
            format!("{empty}\n")
        } else {
            self.render()
        }
    }

    /// The rendered table, one line per row after the header, each ending in a newline.
    pub fn render(&self) -> String {
        fn cell(r: &[String], c: usize) -> &str {
            r.get(c).map(String::as_str).unwrap_or("")
        }
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (c, w) in width.iter_mut().enumerate() {
                *w = (*w).max(cell(r, c).chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (c, (&w, &right)) in width.iter().zip(&self.right).enumerate() {
                let v = cell(r, c);
                let pad = " ".repeat(w - v.chars().count());
                if c > 0 {
                    line.push_str("  ");
                }
                if right {
                    line.push_str(&pad);
                    line.push_str(v);
                } else {
                    line.push_str(v);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {}", printable(v)).trim_end().to_string() + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut t = Table::new(&["NAME", "SIZE", "NOTE"]).right(&[1]);
        t.row(vec!["a".into(), "1.5 MiB".into(), "".into()]);
        t.row(vec!["longer".into(), "7 B".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "NAME       SIZE  NOTE\n\
             a       1.5 MiB\n\
             longer      7 B  x\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_hint() {
        let mut t = Table::new(&["NAME"]);
        assert_eq!(t.render_or("nothing yet"), "nothing yet\n");
        t.row(vec!["a".into()]);
        assert_eq!(t.render_or("nothing yet"), "NAME\na\n");
    }

    #[test]
    fn key_values_align() {
        assert_eq!(
            key_values(&[("DP", "a".into()), ("address", "h:1".into())]),
            "DP       a\naddress  h:1\n"
        );
    }
}
