//! What a target is, and how targets read their input: fields, integers and headers.

/// One fuzz target: a name (its corpus directory), the function, and tokens worth inserting.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub dictionary: &'static [&'static [u8]],
    /// Longest input generated.
    pub len_max: usize,
}

/// Splits fuzz input into fields: a cursor over the bytes.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    pub fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let n = self.0.len().min(8);
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(b)
    }
    pub fn u32(&mut self) -> u32 {
        self.u64() as u32
    }
    /// Bytes up to the next 0x00 (or the end).
    pub fn field(&mut self) -> &'a [u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        let f = &self.0[..end];
        self.0 = self.0.get(end + 1..).unwrap_or(&[]);
        f
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Header names the HTTP targets set, picked by an input byte.
pub const HEADER_NAMES: [&str; 20] = [
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "accept-encoding",
    "x-blake3",
    "upload-metadata",
    "upload-checksum",
    "upload-offset",
    "upload-length",
    "content-length",
    "authorization",
    "expect",
    "content-type",
    "host",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-copy-source",
];

/// A header map from fuzz input: (name byte, value) pairs; values that are not valid header
/// values are left out, as hyper and h3 would refuse them.
pub fn headers(input: &mut Input<'_>) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    while !input.0.is_empty() {
        let name = HEADER_NAMES[input.u8() as usize % HEADER_NAMES.len()];
        let value = input.field();
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            h.append(name, v);
        }
    }
    h
}
