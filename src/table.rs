//! Aligned plain-text tables for the command line's reports.

/// `rows` under `header`, columns two spaces apart; the first `left` columns are aligned left
/// (names), the others right (numbers).
pub fn render(header: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i).map(String::len))
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    if i < left {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_owned() + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let text = super::render(
            &["name", "n"],
            &[
                vec!["a".into(), "100".into()],
                vec!["long".into(), "2".into()],
            ],
            1,
        );
        assert_eq!(text, "name    n\na     100\nlong    2\n");
    }
}
