//! Aligned text tables: a header row, then one row per item, columns two spaces apart.

pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are an error of the caller.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert!(cells.len() <= self.headers.len(), "more cells than columns");
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows, not counting the header.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                line.push_str(cell);
                if i + 1 < widths.len() {
                    let pad = width - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_on_the_widest_cell() {
        let mut table = Table::new(&["ID", "ADDRESS", "STATE"]);
        table.row(vec!["n1".into(), "127.0.0.1:7101".into(), "up".into()]);
        table.row(vec!["node-22".into(), "h:1".into(), "down".into()]);
        assert_eq!(
            table.render(),
            "ID       ADDRESS         STATE\n\
             n1       127.0.0.1:7101  up\n\
             node-22  h:1             down\n"
        );
    }

    #[test]
    fn short_rows_and_empty_tables_render() {
        let mut table = Table::new(&["A", "B"]);
        assert!(table.is_empty());
        assert_eq!(table.render(), "A  B\n");
        table.row(vec!["xyz".into()]);
        assert_eq!(table.render(), "A    B\nxyz\n");
    }
}
