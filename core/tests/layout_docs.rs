//! The layout tables in `docs/region.md` and `docs/board.md` are checked against the shared
//! structs' definitions, so the docs cannot drift from the files they describe.
//!
//! A table follows a `<!-- layout: Struct -->` line; its first three columns are the offset, the
//! size (`48 × 64` for arrays) and the field, in the struct's order. On a mismatch the test
//! prints the table's first columns as the definition has them.

use gpuslice_core::board::{self, BoardFile, BoardHeader};
use gpuslice_core::region::{self, Compute, ContainerRecord, Header, RegionFile, Slot};
use gpuslice_core::shm::Field;

/// One row of a layout table: offset, size, field.
type Row = (usize, usize, String);

fn doc(name: &str) -> String {
    let path = format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn number(cell: &str) -> usize {
    cell.split('×')
        .map(|n| n.trim().replace(',', "").parse::<usize>().unwrap_or_else(|e| panic!("{cell:?}: {e}")))
        .product()
}

/// Every `<!-- layout: Name -->` table of `text`, in order.
fn tables(text: &str) -> Vec<(String, Vec<Row>)> {
    let mut out: Vec<(String, Vec<Row>)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("<!-- layout:").and_then(|r| r.strip_suffix("-->")) else {
            continue;
        };
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        let mut rows = Vec::new();
        for row in lines.by_ref().map(str::trim).take_while(|l| l.starts_with('|')).skip(2) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(cells.len() >= 4, "{name}: a row without offset, size and field: {row}");
            rows.push((number(cells[1]), number(cells[2]), cells[3].trim_matches('`').to_owned()));
        }
        out.push((name.trim().to_owned(), rows));
    }
    out
}

fn render(fields: &[Field]) -> String {
    fields.iter().map(|f| format!("| {} | {} | `{}` |\n", f.offset, f.size, f.name)).collect()
}

fn check(doc_name: &str, structs: &[(&str, &[Field])]) {
    let text = doc(doc_name);
    let found = tables(&text);
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    let wanted: Vec<&str> = structs.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, wanted, "docs/{doc_name}: the layout tables, in order");
    for ((name, rows), (_, fields)) in found.iter().zip(structs) {
        let want: Vec<Row> = fields.iter().map(|f| (f.offset, f.size, f.name.to_owned())).collect();
        assert_eq!(rows, &want, "docs/{doc_name}, table {name}: the definition says\n{}", render(fields));
    }
}

/// `69632` as `69,632`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn docs_region_md_matches_the_region_layout() {
    check(
        "region.md",
        &[
            ("RegionFile", RegionFile::FIELDS),
            ("Header", Header::FIELDS),
            ("Compute", Compute::FIELDS),
            ("ContainerRecord", ContainerRecord::FIELDS),
            ("Slot", Slot::FIELDS),
        ],
    );
    let text = doc("region.md");
    let heading = format!("## Layout (version {})", region::REGION_VERSION);
    assert!(text.contains(&heading), "docs/region.md should have the heading {heading:?}");
    let size = format!("{} bytes", thousands(region::REGION_SIZE));
    assert!(text.contains(&size), "docs/region.md should give the file's size, {size}");
}

#[test]
fn docs_board_md_matches_the_board_layout() {
    check(
        "board.md",
        &[("BoardFile", BoardFile::FIELDS), ("BoardHeader", BoardHeader::FIELDS), ("Record", board::Record::FIELDS)],
    );
    let text = doc("board.md");
    let heading = format!("## Layout (version {})", board::BOARD_VERSION);
    assert!(text.contains(&heading), "docs/board.md should have the heading {heading:?}");
    let size = format!("{} bytes", thousands(board::BOARD_SIZE));
    assert!(text.contains(&size), "docs/board.md should give the file's size, {size}");
}

#[test]
fn the_table_parser_reads_what_it_should() {
    let text = "x\n<!-- layout: A -->\n\n| Offset | Size | Field | What |\n|---|---|---|---|\n| 0 | 8 | `a` | one |\n| 8 | 2 × 1,024 | `b` | two |\nafter\n";
    assert_eq!(tables(text), [("A".to_owned(), vec![(0, 8, "a".to_owned()), (8, 2048, "b".to_owned())])]);
    assert_eq!(thousands(69_632), "69,632");
    assert_eq!(thousands(4096), "4,096");
    assert_eq!(thousands(512), "512");
}
