//! Report payloads: the records of one answer, whatever its format — a JSON document with
//! the records at a pointer, a JSON array of batches (each with records at the pointer),
//! JSON lines, or CSV/TSV with a header row — optionally gzip-compressed. Every record
//! comes out as a JSON object, so fields are read the same way whatever the format (a CSV
//! cell is a string, typed by its field like a number sent as a string).
//!
//! A payload that cannot be read whole (a truncated gzip stream, a CSV row with a missing
//! cell, a line that is not JSON) is refused as a whole: nothing of it is loaded.

use std::io::Read as _;

use super::definition::{Compression, PayloadFormat};

/// What one answer holds: its records, and the answer as JSON for pagination pointers
/// (JSON documents only). A document's records are read where they are, not copied out.
#[derive(Debug)]
pub struct Page(Held);

#[derive(Debug)]
enum Held {
    Records(Vec<serde_json::Value>),
    /// A document whose array of records is at `pointer` (checked when it was read).
    Document {
        document: serde_json::Value,
        pointer: String,
    },
}

impl Page {
    /// The records, in the answer's order.
    pub fn records(&self) -> &[serde_json::Value] {
        match &self.0 {
            Held::Records(records) => records,
            Held::Document { document, pointer } => document
                .pointer(pointer)
                .and_then(serde_json::Value::as_array)
                .map_or(&[], Vec::as_slice),
        }
    }

    /// The answer as JSON (JSON documents only).
    pub fn document(&self) -> Option<&serde_json::Value> {
        match &self.0 {
            Held::Records(_) => None,
            Held::Document { document, .. } => Some(document),
        }
    }
}

/// Decompress `bytes` as `compression` says, refusing more than `max_bytes` once
/// decompressed (a small gzip can expand without bound).
pub fn decompress(
    bytes: Vec<u8>,
    compression: Compression,
    max_bytes: u64,
) -> Result<Vec<u8>, String> {
    match compression {
        Compression::None => Ok(bytes),
        Compression::Auto if !bytes.starts_with(&[0x1f, 0x8b]) => Ok(bytes),
        Compression::Gzip | Compression::Auto => {
            let mut out = Vec::new();
            let mut decoder =
                flate2::read::GzDecoder::new(bytes.as_slice()).take(max_bytes.saturating_add(1));
            decoder
                .read_to_end(&mut out)
                .map_err(|e| format!("the gzip-compressed answer cannot be read whole: {e}"))?;
            if out.len() as u64 > max_bytes {
                return Err(format!(
                    "the answer is larger than {max_bytes} bytes once decompressed"
                ));
            }
            Ok(out)
        }
    }
}

/// Why an answer's records cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not the kind of document at all (an HTML page where JSON was due): the provider
    /// is not answering as it should, which is transient.
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    /// The right kind of document, but its records cannot be used: this request's windows
    /// are retried later.
    #[error("{0}")]
    Unusable(String),
}

/// The records of one answer's text.
pub fn records(
    text: &str,
    format: PayloadFormat,
    pointer: Option<&str>,
    columns: &[&str],
) -> Result<Page, PayloadError> {
    records_of(text, format, pointer, columns).map_err(|e| match e {
        Read::NotJson(e) => PayloadError::NotJson(e),
        Read::Other(e) => PayloadError::Unusable(e),
    })
}

enum Read {
    NotJson(String),
    Other(String),
}

impl From<String> for Read {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

impl From<&str> for Read {
    fn from(message: &str) -> Self {
        Self::Other(message.to_string())
    }
}

fn records_of(
    text: &str,
    format: PayloadFormat,
    pointer: Option<&str>,
    columns: &[&str],
) -> Result<Page, Read> {
    match format {
        PayloadFormat::Json => {
            let document: serde_json::Value =
                serde_json::from_str(text).map_err(|e| Read::NotJson(e.to_string()))?;
            at_pointer(&document, pointer)?;
            Ok(Page(Held::Document {
                document,
                pointer: pointer.unwrap_or("").to_string(),
            }))
        }
        PayloadFormat::JsonBatches => json_batches(text, pointer),
        PayloadFormat::JsonLines => json_lines(text),
        PayloadFormat::Csv | PayloadFormat::Tsv => delimited(text, format, columns),
    }
}

/// A JSON array of batches, each with its records at `pointer`.
fn json_batches(text: &str, pointer: Option<&str>) -> Result<Page, Read> {
    let document: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Read::NotJson(e.to_string()))?;
    let batches = document
        .as_array()
        .ok_or("the answer is not a JSON array of batches")?;
    let mut records = Vec::new();
    for batch in batches {
        // A batch without records (the last of a stream, say) holds none.
        if pointer.is_some_and(|p| batch.pointer(p).is_none()) {
            continue;
        }
        records.extend(at_pointer(batch, pointer)?.iter().cloned());
    }
    Ok(Page(Held::Records(records)))
}

/// One JSON record per line; blank lines are skipped.
fn json_lines(text: &str) -> Result<Page, Read> {
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {} is not JSON: {e}", n + 1))?;
        records.push(record);
    }
    Ok(Page(Held::Records(records)))
}

/// CSV or TSV with a header row naming at least `columns`; an empty cell is null.
fn delimited(text: &str, format: PayloadFormat, columns: &[&str]) -> Result<Page, Read> {
    let delimiter = if format == PayloadFormat::Csv {
        b','
    } else {
        b'\t'
    };
    // Tab-separated values have no quoting (a cell holds no tab): a quote is text,
    // as in a product name such as `"Classic" pen` in Amazon's flat files.
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(format == PayloadFormat::Csv)
        .flexible(false)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Read::Other(format!("the header row cannot be read: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if let Some(missing) = columns.iter().find(|c| !header.iter().any(|h| h == *c)) {
        return Err(Read::Other(format!(
            "the answer has no column {missing:?} (its columns: {})",
            header.join(", ")
        )));
    }
    let mut records = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| format!("a row cannot be read: {e}"))?;
        let record: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .zip(row.iter())
            .map(|(name, cell)| {
                let value = if cell.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::Value::String(cell.to_string())
                };
                (name.clone(), value)
            })
            .collect();
        records.push(serde_json::Value::Object(record));
    }
    Ok(Page(Held::Records(records)))
}

fn at_pointer<'a>(
    document: &'a serde_json::Value,
    pointer: Option<&str>,
) -> Result<&'a Vec<serde_json::Value>, String> {
    let pointer = pointer.unwrap_or("");
    document
        .pointer(pointer)
        .and_then(|r| r.as_array())
        .ok_or_else(|| format!("the answer has no array of records at {pointer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(text: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn every_format_gives_records_as_objects() {
        let json = records(
            r#"{"data": [{"id": 1}]}"#,
            PayloadFormat::Json,
            Some("/data"),
            &[],
        )
        .unwrap();
        assert_eq!(json.records(), vec![serde_json::json!({"id": 1})]);
        let batches = records(
            r#"[{"results": [{"id": 1}, {"id": 2}]}, {"results": [{"id": 3}]}, {"fieldMask": "x"}]"#,
            PayloadFormat::JsonBatches,
            Some("/results"),
            &[],
        )
        .unwrap();
        assert_eq!(batches.records().len(), 3);
        let lines = records(
            "{\"id\": 1}\n\n{\"id\": 2}\n",
            PayloadFormat::JsonLines,
            None,
            &[],
        )
        .unwrap();
        assert_eq!(lines.records().len(), 2);
        let csv = records(
            "id,spend\n1,12.50\n2,\n",
            PayloadFormat::Csv,
            None,
            &["id", "spend"],
        )
        .unwrap();
        assert_eq!(
            csv.records(),
            vec![
                serde_json::json!({"id": "1", "spend": "12.50"}),
                serde_json::json!({"id": "2", "spend": null}),
            ]
        );
        let tsv = records(
            "date\tunits\n2026-03-01\t4\n",
            PayloadFormat::Tsv,
            None,
            &["units"],
        )
        .unwrap();
        assert_eq!(
            tsv.records(),
            vec![serde_json::json!({"date": "2026-03-01", "units": "4"})]
        );
    }

    #[test]
    fn a_quote_in_a_tab_separated_cell_is_text() {
        let tsv = records(
            "sku\tproduct-name\tquantity\nR-12\t12\" ruler, \"steel\"\t2\nP-1\t\"pen\t1\n",
            PayloadFormat::Tsv,
            None,
            &["product-name"],
        )
        .unwrap();
        assert_eq!(
            tsv.records(),
            vec![
                serde_json::json!({"sku": "R-12", "product-name": "12\" ruler, \"steel\"", "quantity": "2"}),
                serde_json::json!({"sku": "P-1", "product-name": "\"pen", "quantity": "1"}),
            ]
        );
    }

    #[test]
    fn a_csv_without_a_column_or_with_a_short_row_is_refused_whole() {
        let err = records("id\n1\n", PayloadFormat::Csv, None, &["id", "spend"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column \"spend\""), "{err}");
        let err = records("id,spend\n1,2\n3\n", PayloadFormat::Csv, None, &["id"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a row cannot be read"), "{err}");
        let err = records(
            "{\"id\": 1}\n{\"id\": \n",
            PayloadFormat::JsonLines,
            None,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2 is not JSON"), "{err}");
        assert!(matches!(
            records("<html>", PayloadFormat::Json, None, &[]),
            Err(PayloadError::NotJson(_))
        ));
    }

    #[test]
    fn a_truncated_or_oversized_gzip_is_refused() {
        let packed = gzip("id\n1\n2\n");
        assert_eq!(
            decompress(packed.clone(), Compression::Gzip, 1000).unwrap(),
            b"id\n1\n2\n"
        );
        let truncated = packed[..packed.len() - 6].to_vec();
        let err = decompress(truncated, Compression::Gzip, 1000).unwrap_err();
        assert!(err.contains("cannot be read whole"), "{err}");
        let bomb = gzip(&"0".repeat(100_000));
        let err = decompress(bomb, Compression::Gzip, 1000).unwrap_err();
        assert!(err.contains("larger than 1000 bytes"), "{err}");
        assert_eq!(
            decompress(packed.clone(), Compression::Auto, 1000).unwrap(),
            decompress(packed.clone(), Compression::Gzip, 1000).unwrap()
        );
        assert_eq!(
            decompress(b"plain".to_vec(), Compression::Auto, 1000).unwrap(),
            b"plain"
        );
        let err = decompress(b"not gzip".to_vec(), Compression::Gzip, 1000).unwrap_err();
        assert!(err.contains("cannot be read whole"), "{err}");
    }
}
