//! Streams: the schema of a report and its rows, as providers hand them to destinations.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    Text,
    Integer,
    /// An exact decimal number, kept as its decimal text.
    Decimal,
    Date,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// The shape of a stream's rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSchema {
    pub name: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
}

impl StreamSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One cell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Integer(i64),
    Date(NaiveDate),
    /// Text and decimals.
    Text(String),
}

/// One row, cells in the order of the schema's columns.
pub type Row = Vec<Value>;
