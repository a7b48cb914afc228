//! Golden bytes of every format the control plane puts on the wire or on disk: the RPC envelope
//! of every request (each variant with every field filled), the answers (values and errors),
//! and every persisted record. The expected bytes are in `tests/golden/formats.txt`; a change
//! to any encoding fails here. An intended change (a field appended at the end of a record, a
//! request added at the end of the enum) is accepted by re-running with `OSTORE_BLESS=1` and
//! reviewing the diff of that file: a changed line for an existing format means old nodes or
//! old records no longer read right.
//!
//! Values are "specimens": built by a deserializer that gives every field a different value
//! (numbers counting up, strings and byte strings naming their position, `Some`, two
//! elements per sequence, a chosen variant per enum), so that swapping two fields of one type
//! changes the bytes too.

use ostore_control::cluster::{
    ClusterView, DrainProgress, DrainRec, LeaseRec, MembershipRec, NodeRec, Registration,
};
use ostore_control::meta::{MetaError, NewContent, PutOutcome, WriteCondition};
use ostore_control::records::{
    self, AccessKeyRec, BucketRec, ContentRec, DriveRec, HeadRec, IntentRec, ObjectAttrs, PartRef,
    RepairRec, ShardLoc, VersionRec,
};
use ostore_control::rpc::{self, Request, Token};
use ostore_control::scrub::{PassRec, ScrubCursor, ScrubPolicy};
use ostore_control::upload::{Progress, UploadLock, UploadRec, UploadState};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A deserializer that makes up a value of any type, deterministically.
struct Specimen<'a> {
    n: &'a mut u64,
    /// The variant the outermost enum takes.
    variant: Option<u32>,
    /// Nested enums take their last variant in round 0 (usually the one with the most in
    /// it), the first in round 1, and so on.
    round: u32,
}

impl Specimen<'_> {
    fn next(&mut self) -> u64 {
        *self.n += 1;
        *self.n
    }
    fn child(&mut self) -> Specimen<'_> {
        Specimen {
            n: self.n,
            variant: None,
            round: self.round,
        }
    }
}

#[derive(Debug)]
struct Error(String);
impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Error {}
impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// `len` values in a row, for sequences, tuples and structs.
struct Seq<'a, 'b> {
    s: &'a mut Specimen<'b>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, '_> {
    type Error = Error;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut self.s.child()).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for Seq<'_, '_> {
    type Error = Error;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut self.s.child()).map(Some)
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut self.s.child())
    }
}

struct Enum<'a, 'b> {
    s: &'a mut Specimen<'b>,
    index: u32,
}

impl<'de> de::EnumAccess<'de> for Enum<'_, '_> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<V: de::DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let v = seed.deserialize(de::value::U32Deserializer::<Error>::new(self.index))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Enum<'_, '_> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut self.s.child())
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Seq {
            s: self.s,
            left: len,
        })
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Seq {
            s: self.s,
            left: fields.len(),
        })
    }
}

impl<'de> de::Deserializer<'de> for &mut Specimen<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error("a self-describing value was asked for".into()))
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(self.next() % 2 == 1)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i8(-((self.next() % 100) as i8))
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i16(-((self.next() * 7) as i16))
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i32(-((self.next() * 1009) as i32))
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(-((self.next() * 1_000_003) as i64))
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u8(self.next() as u8)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u16((self.next() * 257) as u16)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u32((self.next() * 65_537) as u32)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(self.next() * 1_000_000_007)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f32(self.next() as f32 + 0.5)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(self.next() as f64 + 0.25)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_char((b'a' + (self.next() % 26) as u8) as char)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_string(format!("s{}", self.next()))
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let n = self.next() as u8;
        v.visit_byte_buf(vec![n, n.wrapping_add(1), n.wrapping_add(2)])
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(v)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(&mut self.child())
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(&mut self.child())
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Seq { s: self, left: 2 })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Seq { s: self, left: len })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_seq(Seq { s: self, left: len })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_map(Seq { s: self, left: 1 })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_seq(Seq {
            s: self,
            left: fields.len(),
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let len = variants.len() as u32;
        let index = match self.variant.take() {
            Some(i) => i,
            None => (len - 1 + self.round) % len,
        };
        v.visit_enum(Enum { s: self, index })
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u32(0)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
}

/// A made-up value of `T`; for an enum, its variant number `variant`.
fn specimen<T: DeserializeOwned>(variant: Option<u32>) -> Result<T, Error> {
    specimen_in::<T>(variant, 0)
}

fn specimen_in<T: DeserializeOwned>(variant: Option<u32>, round: u32) -> Result<T, Error> {
    let mut n = 0;
    T::deserialize(&mut Specimen {
        n: &mut n,
        variant,
        round,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every golden format: name → bytes.
fn formats() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let token = Token::new(*b"0123456789abcdef", 1_700_000_000_000);
    // Every request, in the envelope nodes send (version byte, token, request).
    let mut variant = 0;
    while let Ok(req) = specimen::<Request>(Some(variant)) {
        let name = format!("{req:?}");
        let name = name
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .expect("a variant name");
        let bytes = rpc::encode_request(&token, &req);
        let (t, back) = rpc::decode_request(&bytes).expect("decodes");
        assert_eq!(t, token);
        assert_eq!(rpc::encode_request(&t, &back), bytes, "{name} round trip");
        out.insert(format!("request {variant:02} {name}"), bytes);
        variant += 1;
    }
    assert!(variant >= 60, "only {variant} requests made");
    // Answers: a value, and every error.
    out.insert(
        "answer ok PutOutcome".into(),
        rpc::encode_answer(&Ok(postcard::to_stdvec(
            &specimen::<PutOutcome>(None).expect("a PutOutcome"),
        )
        .expect("encodes"))),
    );
    let mut e = 0;
    while let Ok(err) = specimen::<rpc::WireError>(Some(e)) {
        let me: MetaError = err.into();
        out.insert(format!("answer error {e:02}"), rpc::encode_answer(&Err(me)));
        e += 1;
    }
    assert!(e >= 10, "only {e} errors made");
    // Records, as stored (format byte, postcard): each variant of the record itself, and
    // rounds that take each variant of the enums inside it; distinct encodings only.
    fn rec<T: Serialize + DeserializeOwned + 'static>(
        out: &mut BTreeMap<String, Vec<u8>>,
        name: &str,
    ) {
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for variant in 0..16 {
            for round in 0..4 {
                let Ok(v) = specimen_in::<T>(Some(variant), round) else {
                    continue;
                };
                let b = records::encode(&v);
                let back: T = records::decode(&b).expect("decodes");
                assert_eq!(records::encode(&back), b, "{name} round trip");
                if !seen.contains(&b) {
                    out.insert(format!("record {name} {}", seen.len()), b.clone());
                    seen.push(b);
                }
            }
        }
        assert!(!seen.is_empty(), "no {name} made");
    }
    rec::<BucketRec>(&mut out, "BucketRec");
    rec::<VersionRec>(&mut out, "VersionRec");
    rec::<ObjectAttrs>(&mut out, "ObjectAttrs");
    rec::<AccessKeyRec>(&mut out, "AccessKeyRec");
    rec::<PartRef>(&mut out, "PartRef");
    rec::<ostore_control::multipart::MpuRec>(&mut out, "MpuRec");
    rec::<ostore_control::multipart::PartRec>(&mut out, "PartRec");
    rec::<Vec<PartRef>>(&mut out, "PartList");
    rec::<HeadRec>(&mut out, "HeadRec");
    rec::<ShardLoc>(&mut out, "ShardLoc");
    rec::<DriveRec>(&mut out, "DriveRec");
    rec::<IntentRec>(&mut out, "IntentRec");
    rec::<RepairRec>(&mut out, "RepairRec");
    rec::<UploadRec>(&mut out, "UploadRec");
    rec::<UploadLock>(&mut out, "UploadLock");
    rec::<UploadState>(&mut out, "UploadState");
    rec::<Progress>(&mut out, "Progress");
    rec::<ScrubPolicy>(&mut out, "ScrubPolicy");
    rec::<PassRec>(&mut out, "PassRec");
    rec::<ScrubCursor>(&mut out, "ScrubCursor");
    rec::<NodeRec>(&mut out, "NodeRec");
    rec::<MembershipRec>(&mut out, "MembershipRec");
    rec::<LeaseRec>(&mut out, "LeaseRec");
    rec::<DrainRec>(&mut out, "DrainRec");
    rec::<DrainProgress>(&mut out, "DrainProgress");
    rec::<Registration>(&mut out, "Registration");
    rec::<ClusterView>(&mut out, "ClusterView");
    rec::<ostore_control::trust::CaRec>(&mut out, "CaRec");
    rec::<ostore_control::trust::RevokedRec>(&mut out, "RevokedRec");
    rec::<ostore_control::trust::SecretRec>(&mut out, "SecretRec");
    rec::<ostore_control::trust::PreviousSecret>(&mut out, "PreviousSecret");
    rec::<NewContent>(&mut out, "NewContent");
    rec::<WriteCondition>(&mut out, "WriteCondition");
    // Content records carry their own format byte.
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for round in 0..4 {
        let c = specimen_in::<ContentRec>(None, round).expect("a ContentRec");
        let b = records::encode_content(&c);
        assert_eq!(
            records::encode_content(&records::decode_content(&b).expect("decodes")),
            b
        );
        if !seen.contains(&b) {
            out.insert(format!("record ContentRec {}", seen.len()), b.clone());
            seen.push(b);
        }
    }
    out
}

fn golden_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/formats.txt")
}

#[test]
fn every_format_keeps_its_bytes() {
    let now: Vec<String> = formats()
        .iter()
        .map(|(k, v)| format!("{k}: {}", hex(v)))
        .collect();
    let path = golden_file();
    if std::env::var_os("OSTORE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
        std::fs::write(&path, now.join("\n") + "\n").expect("write");
        eprintln!("wrote {}", path.display());
        return;
    }
    let pinned = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with OSTORE_BLESS=1 to write it",
            path.display()
        )
    });
    let pinned: Vec<&str> = pinned.lines().collect();
    let mut diff = Vec::new();
    for line in &pinned {
        if !now.iter().any(|n| n == line) {
            diff.push(format!("- {line}"));
        }
    }
    for line in &now {
        if !pinned.contains(&line.as_str()) {
            diff.push(format!("+ {line}"));
        }
    }
    assert!(
        diff.is_empty(),
        "encodings changed (- pinned, + now); if intended, re-run with OSTORE_BLESS=1 and \
         review the diff of {}:\n{}",
        path.display(),
        diff.join("\n")
    );
}

#[test]
fn specimens_differ_field_by_field() {
    // Two fields of one type get different values, so a swap would show.
    let v: VersionRec = specimen(None).expect("a VersionRec");
    assert_ne!(v.version, v.created_ms);
    let t: Token = specimen(None).expect("a Token");
    assert_ne!(t.id[0], t.id[1]);
    // Every enum variant is reachable, and past the last one there is none.
    assert!(specimen::<Request>(Some(0)).is_ok());
    assert!(specimen::<Request>(Some(10_000)).is_err());
}
