//! Our own reader of a GGUF file's header, metadata and tensor index (llama.cpp's format,
//! versions 2 and 3, little-endian), written from the GGUF specification in ggml's
//! `docs/gguf.md`. It stops before the tensors' data, so reading the metadata of a 5 GB
//! model reads a few megabytes.
//!
//! Layout: magic `GGUF`, version (u32), tensor count (u64), metadata count (u64), then each
//! metadata entry as a key (u64 length + UTF-8 bytes), a value type (u32) and the value, then
//! each tensor's name, dimension count (u32), dimensions (u64 each), type (u32) and data
//! offset (u64).
//!
//! Every count and length is checked before anything is allocated for it, against a fixed
//! ceiling and against the bytes the file has left, so a corrupt or hostile file is refused
//! with an error naming the file and the key rather than exhausting memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

/// `GGUF` read as a little-endian u32.
const MAGIC: [u8; 4] = *b"GGUF";
/// Most metadata entries a file may declare (real models have a few dozen).
const MAX_METADATA: u64 = 1 << 16;
/// Most tensors a file may declare (a 405B model has a few thousand).
const MAX_TENSORS: u64 = 1 << 20;
/// Longest string: chat templates are tens of kilobytes, tokens a few bytes.
const MAX_STRING: u64 = 16 << 20;
/// Longest array: the largest vocabularies and merge lists have a few hundred thousand.
const MAX_ARRAY: u64 = 1 << 22;
/// Deepest nesting of arrays in arrays (the spec allows it; models use none).
const MAX_DEPTH: usize = 4;
/// Most dimensions of a tensor (ggml has 4).
const MAX_DIMS: u32 = 8;

/// A metadata value, with the type the file stored it as.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any integer type, as an i128 that holds them all exactly.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// One tensor's entry in the index (its data is not read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost first as GGUF lists them.
    pub dims: Vec<u64>,
    /// The ggml type id (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, 12 Q4_K, ...).
    pub ggml_type: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

/// A GGUF file's header, metadata and tensor index.
#[derive(Clone, Debug)]
pub struct Gguf {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

impl Gguf {
    /// Reads the header, metadata and tensor index of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        Self::from_reader(path, BufReader::new(file), len)
    }

    /// Reads a GGUF header from `reader`, which holds `len` bytes; `path` names it in errors.
    pub fn from_reader(path: &Path, reader: impl Read, len: u64) -> Result<Self> {
        let mut r = Cursor { inner: reader, offset: 0, len };
        let bad = |m: String| ModelError::gguf(path, m);
        let magic: [u8; 4] = r.array().map_err(|m| bad(format!("not a GGUF file: {m}")))?;
        if magic != MAGIC {
            return Err(bad(format!(
                "not a GGUF file (starts with {magic:02x?}, a GGUF file with \"GGUF\")"
            )));
        }
        let version = r.u32().map_err(|m| bad(format!("version: {m}")))?;
        match version {
            2 | 3 => {},
            1 => return Err(bad("GGUF version 1 is not supported (only 2 and 3)".into())),
            v if v.swap_bytes() <= 3 => {
                return Err(bad("big-endian GGUF files are not supported".into()))
            },
            v => return Err(bad(format!("GGUF version {v} is not supported (only 2 and 3)"))),
        }
        let tensor_count = r.u64().map_err(|m| bad(format!("tensor count: {m}")))?;
        let kv_count = r.u64().map_err(|m| bad(format!("metadata count: {m}")))?;
        // A metadata entry takes at least 13 bytes (key length, type, one-byte value), a
        // tensor entry at least 24 (name length, dimension count, type, offset).
        r.check_count("metadata count", kv_count, MAX_METADATA, 13).map_err(bad)?;
        r.check_count("tensor count", tensor_count, MAX_TENSORS, 24).map_err(bad)?;

        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = r.string().map_err(|m| bad(format!("key of metadata entry {i}: {m}")))?;
            let value =
                r.typed_value(0).map_err(|m| ModelError::metadata(path, key.as_str(), m))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(ModelError::metadata(path, key, "appears twice"));
            }
        }
        let mut tensors = Vec::new();
        for i in 0..tensor_count {
            let info = r.tensor_info().map_err(|m| bad(format!("tensor entry {i}: {m}")))?;
            tensors.push(info);
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// The tensor index, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Whether the file holds a tensor of that name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.name == name)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The value of `key`, or an error naming the file and the key.
    pub fn value(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| ModelError::MissingKey { path: self.path.clone(), key: key.into() })
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> ModelError {
        ModelError::metadata(
            &self.path,
            key,
            format!("expected {expected}, found {}", found.type_name()),
        )
    }

    /// An integer that fits a u32, whatever integer type stored it (converters write u32,
    /// some u64 or i32).
    pub fn u32(&self, key: &str) -> Result<u32> {
        let v = self.value(key)?;
        let n = v.as_integer().ok_or_else(|| self.wrong_type(key, "an integer", v))?;
        u32::try_from(n)
            .map_err(|_| ModelError::metadata(&self.path, key, format!("{n} is not a u32")))
    }

    /// A float (f32, or f64 narrowed).
    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.value(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => Err(self.wrong_type(key, "a float", other)),
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// An array, whatever its elements.
    pub fn array(&self, key: &str) -> Result<&[Value]> {
        match self.value(key)? {
            Value::Array(a) => Ok(a),
            other => Err(self.wrong_type(key, "an array", other)),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.wrong_type(key, "an array of strings", other)),
            })
            .collect()
    }

    /// An array of i32.
    pub fn i32s(&self, key: &str) -> Result<Vec<i32>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                Value::I32(n) => Ok(*n),
                other => Err(self.wrong_type(key, "an array of i32", other)),
            })
            .collect()
    }
}

/// A reader that knows its offset and how many bytes the file has left. Its errors are the
/// problem alone; callers add the file and the key.
struct Cursor<R> {
    inner: R,
    offset: u64,
    len: u64,
}

type Step<T> = std::result::Result<T, String>;

impl<R: Read> Cursor<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.offset)
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| self.read_error(e))?;
        self.offset = self.offset.saturating_add(N as u64);
        Ok(buf)
    }

    fn read_error(&self, e: std::io::Error) -> String {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("the file ends at byte {} (truncated?)", self.len.min(self.offset))
        } else {
            format!("read error at byte {}: {e}", self.offset)
        }
    }

    fn u32(&mut self) -> Step<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Step<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Refuses a count above `max`, or one whose entries (at least `min_size` bytes each)
    /// cannot fit in what the file has left.
    fn check_count(&self, what: &str, count: u64, max: u64, min_size: u64) -> Step<()> {
        if count > max {
            return Err(format!("{what} {count} is absurd (at most {max})"));
        }
        let left = self.remaining();
        if count.saturating_mul(min_size) > left {
            return Err(format!(
                "{what} {count} cannot fit in the {left} bytes left at byte {} (truncated?)",
                self.offset
            ));
        }
        Ok(())
    }

    fn string(&mut self) -> Step<String> {
        let len = self.u64()?;
        self.check_count("string length", len, MAX_STRING, 1)?;
        let mut bytes = Vec::new();
        // `check_count` bounds `len` by the file's size and MAX_STRING, so it fits a usize.
        let read =
            (&mut self.inner).take(len).read_to_end(&mut bytes).map_err(|e| self.read_error(e))?;
        self.offset = self.offset.saturating_add(read as u64);
        if (read as u64) < len {
            return Err(self.read_error(std::io::ErrorKind::UnexpectedEof.into()));
        }
        String::from_utf8(bytes)
            .map_err(|e| format!("string at byte {} is not UTF-8: {e}", self.offset))
    }

    /// A value type tag then the value.
    fn typed_value(&mut self, depth: usize) -> Step<Value> {
        let tag = self.u32()?;
        self.value(tag, depth)
    }

    fn value(&mut self, tag: u32, depth: usize) -> Step<Value> {
        Ok(match tag {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [b] => {
                    return Err(format!("bool byte {b} at byte {} is neither 0 nor 1", self.offset))
                },
            },
            8 => Value::String(self.string()?),
            9 => self.array_value(depth)?,
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(format!("unknown value type {t} at byte {}", self.offset)),
        })
    }

    fn array_value(&mut self, depth: usize) -> Step<Value> {
        if depth >= MAX_DEPTH {
            return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
        }
        let tag = self.u32()?;
        let len = self.u64()?;
        let min_size = match tag {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            t => return Err(format!("array of unknown value type {t}")),
        };
        self.check_count("array length", len, MAX_ARRAY, min_size)?;
        let mut items = Vec::with_capacity(len as usize);
        for _ in 0..len {
            items.push(self.value(tag, depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn tensor_info(&mut self) -> Step<TensorInfo> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims > MAX_DIMS {
            return Err(format!("tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"));
        }
        let dims = (0..n_dims).map(|_| self.u64()).collect::<Step<Vec<u64>>>()?;
        let ggml_type = self.u32()?;
        let offset = self.u64()?;
        Ok(TensorInfo { name, dims, ggml_type, offset })
    }
}
