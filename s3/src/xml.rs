//! S3's XML: the documents ostore writes (escaped, built as strings: they are flat and
//! small per entry) and the request bodies it reads (with `quick-xml`, bounded in size by the
//! caller and in entries here).

use crate::error::{Code, S3Error};
use quick_xml::events::Event;
use quick_xml::Reader;

/// The XML declaration every document starts with.
pub const DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
/// S3's namespace.
pub const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
/// Most objects one DeleteObjects may name (S3's limit).
pub const DELETE_OBJECTS_MAX: usize = 1000;
/// Most parts one CompleteMultipartUpload may list (S3's limit).
pub const PARTS_MAX: usize = 10_000;

/// Appends `<name>text</name>`, the text escaped.
pub fn element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(&quick_xml::escape::escape(text));
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// S3's `<Error>` document.
pub fn error(e: &S3Error, resource: &str, request_id: &str) -> String {
    let mut out = String::from(DECLARATION);
    out.push_str("<Error>");
    element(&mut out, "Code", e.code.as_str());
    element(&mut out, "Message", &e.message);
    element(&mut out, "Resource", resource);
    element(&mut out, "RequestId", request_id);
    out.push_str("</Error>");
    out
}

fn malformed(m: impl Into<String>) -> S3Error {
    S3Error::new(Code::MalformedXML, m)
}

/// Walks a document, calling `f(path, Some(text))` for each element's text (path: the local
/// names from the root) and `f(path, None)` as each element closes.
fn walk(
    body: &[u8],
    mut f: impl FnMut(&[String], Option<String>) -> Result<(), S3Error>,
) -> Result<(), S3Error> {
    let mut r = Reader::from_reader(body);
    r.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    let mut seen_root = false;
    loop {
        let ev = r
            .read_event_into(&mut buf)
            .map_err(|e| malformed(format!("the XML is not well formed: {e}")))?;
        match ev {
            Event::Start(s) => {
                if path.is_empty() && seen_root {
                    return Err(malformed("more than one root element"));
                }
                seen_root = true;
                if path.len() >= 8 {
                    return Err(malformed("the XML nests too deeply"));
                }
                path.push(String::from_utf8_lossy(s.local_name().as_ref()).into_owned());
            }
            Event::Empty(s) => {
                if path.is_empty() && seen_root {
                    return Err(malformed("more than one root element"));
                }
                seen_root = true;
                path.push(String::from_utf8_lossy(s.local_name().as_ref()).into_owned());
                f(&path, Some(String::new()))?;
                f(&path, None)?;
                path.pop();
            }
            Event::Text(t) => {
                let v = t
                    .unescape()
                    .map_err(|e| malformed(format!("bad text in the XML: {e}")))?;
                f(&path, Some(v.into_owned()))?;
            }
            Event::CData(c) => {
                f(&path, Some(String::from_utf8_lossy(&c).into_owned()))?;
            }
            Event::End(_) => {
                f(&path, None)?;
                path.pop();
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
        buf.clear();
    }
    if !path.is_empty() || !seen_root {
        return Err(malformed("the XML document is incomplete"));
    }
    Ok(())
}

fn is(path: &[String], want: &[&str]) -> bool {
    path.len() == want.len() && path.iter().zip(want).all(|(a, b)| a == b)
}

/// One object a DeleteObjects names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDelete {
    pub key: String,
    pub version_id: Option<String>,
}

/// A DeleteObjects body: `<Delete><Quiet>…</Quiet><Object><Key>…</Key><VersionId>…</VersionId></Object>…</Delete>`.
pub fn delete_objects(body: &[u8]) -> Result<(Vec<ToDelete>, bool), S3Error> {
    let mut out: Vec<ToDelete> = Vec::new();
    let mut quiet = false;
    let mut cur: Option<ToDelete> = None;
    walk(body, |path, v| {
        if let Some(v) = v {
            if is(path, &["Delete", "Quiet"]) {
                quiet = v == "true";
            } else if is(path, &["Delete", "Object", "Key"]) {
                cur.get_or_insert(ToDelete {
                    key: String::new(),
                    version_id: None,
                })
                .key = v;
            } else if is(path, &["Delete", "Object", "VersionId"]) {
                cur.get_or_insert(ToDelete {
                    key: String::new(),
                    version_id: None,
                })
                .version_id = Some(v);
            }
        } else {
            if is(path, &["Delete", "Object"]) {
                let o = cur.take().unwrap_or(ToDelete {
                    key: String::new(),
                    version_id: None,
                });
                if o.key.is_empty() {
                    return Err(malformed("an <Object> without a <Key>"));
                }
                if out.len() >= DELETE_OBJECTS_MAX {
                    return Err(malformed(format!(
                        "at most {DELETE_OBJECTS_MAX} objects per DeleteObjects"
                    )));
                }
                out.push(o);
            } else if path.len() == 1 && path[0] != "Delete" {
                return Err(malformed("the root element must be <Delete>"));
            }
        }
        Ok(())
    })?;
    if out.is_empty() {
        return Err(malformed("DeleteObjects names no object"));
    }
    Ok((out, quiet))
}

/// One part a CompleteMultipartUpload lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRef {
    pub number: u32,
    /// Without its quotes.
    pub etag: String,
}

/// A CompleteMultipartUpload body: `<CompleteMultipartUpload><Part><PartNumber>…</PartNumber><ETag>…</ETag></Part>…`.
/// Part numbers are 1–10,000; their order is the caller's to check (`InvalidPartOrder`).
pub fn complete_multipart(body: &[u8]) -> Result<Vec<PartRef>, S3Error> {
    let mut out: Vec<PartRef> = Vec::new();
    let (mut number, mut etag): (Option<u32>, Option<String>) = (None, None);
    walk(body, |path, v| {
        if let Some(v) = v {
            if is(path, &["CompleteMultipartUpload", "Part", "PartNumber"]) {
                number = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=PARTS_MAX as u32).contains(n))
                        .ok_or_else(|| {
                            S3Error::new(
                                Code::InvalidArgument,
                                format!("part numbers are 1 to {PARTS_MAX}, not {v:?}"),
                            )
                        })?,
                );
            } else if is(path, &["CompleteMultipartUpload", "Part", "ETag"]) {
                etag = Some(v.trim_matches('"').to_string());
            }
        } else {
            if is(path, &["CompleteMultipartUpload", "Part"]) {
                let (Some(n), Some(e)) = (number.take(), etag.take()) else {
                    return Err(malformed("a <Part> needs <PartNumber> and <ETag>"));
                };
                if out.len() >= PARTS_MAX {
                    return Err(malformed(format!("at most {PARTS_MAX} parts")));
                }
                out.push(PartRef { number: n, etag: e });
            } else if path.len() == 1 && path[0] != "CompleteMultipartUpload" {
                return Err(malformed(
                    "the root element must be <CompleteMultipartUpload>",
                ));
            }
        }
        Ok(())
    })?;
    if out.is_empty() {
        return Err(malformed("CompleteMultipartUpload lists no part"));
    }
    Ok(out)
}

/// A PutBucketVersioning body's status: `Some(true)` Enabled, `Some(false)` Suspended, `None`
/// when absent.
pub fn versioning(body: &[u8]) -> Result<Option<bool>, S3Error> {
    let mut status = None;
    walk(body, |path, v| {
        if let (Some(v), true) = (v, is(path, &["VersioningConfiguration", "Status"])) {
            status = Some(match v.as_str() {
                "Enabled" => true,
                "Suspended" => false,
                _ => return Err(malformed("Status is Enabled or Suspended")),
            });
        }
        Ok(())
    })?;
    Ok(status)
}

/// A CreateBucket body's `LocationConstraint`, if any (an empty body has none).
pub fn location_constraint(body: &[u8]) -> Result<Option<String>, S3Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut loc = None;
    walk(body, |path, v| {
        if let (Some(v), true) = (
            v,
            is(path, &["CreateBucketConfiguration", "LocationConstraint"]),
        ) {
            loc = Some(v);
        }
        Ok(())
    })?;
    Ok(loc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_escaped() {
        let e = S3Error::new(Code::NoSuchKey, "no <key> & \"such\"");
        let x = error(&e, "/b/a&b", "r1");
        assert!(x.starts_with(DECLARATION));
        assert!(x.contains("<Code>NoSuchKey</Code>"));
        assert!(x.contains("<Message>no &lt;key&gt; &amp; &quot;such&quot;</Message>"));
        assert!(x.contains("<Resource>/b/a&amp;b</Resource>"));
    }

    #[test]
    fn delete_objects_reads_keys_versions_and_quiet() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
            <Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Object><Key>a &amp; b</Key></Object>
              <Object><Key>c</Key><VersionId>7</VersionId></Object>
              <Quiet>true</Quiet>
            </Delete>"#;
        let (objs, quiet) = delete_objects(body).unwrap();
        assert!(quiet);
        assert_eq!(
            objs,
            vec![
                ToDelete {
                    key: "a & b".into(),
                    version_id: None
                },
                ToDelete {
                    key: "c".into(),
                    version_id: Some("7".into())
                }
            ]
        );
        for bad in [
            &b"<Delete></Delete>"[..],
            b"<Delete><Object></Object></Delete>",
            b"<Delete><Object><Key>a</Key></Object>",
            b"<Other><Object><Key>a</Key></Object></Other>",
            b"not xml",
            b"<Delete/><Delete/>",
        ] {
            assert_eq!(
                delete_objects(bad).unwrap_err().code,
                Code::MalformedXML,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: String = std::iter::once("<Delete>".to_string())
            .chain((0..=DELETE_OBJECTS_MAX).map(|i| format!("<Object><Key>{i}</Key></Object>")))
            .chain(std::iter::once("</Delete>".to_string()))
            .collect();
        assert!(delete_objects(many.as_bytes()).is_err());
    }

    #[test]
    fn complete_multipart_reads_parts() {
        let body = br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
            <Part><ETag>"a54357aff0632cce46d942af68356b38"</ETag><PartNumber>1</PartNumber></Part>
            <Part><PartNumber>2</PartNumber><ETag>0c78aef83f66abc1fa1e8477f296d394</ETag></Part>
          </CompleteMultipartUpload>"#;
        let parts = complete_multipart(body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].number, 1);
        assert_eq!(parts[0].etag, "a54357aff0632cce46d942af68356b38");
        assert_eq!(
            complete_multipart(b"<CompleteMultipartUpload><Part><PartNumber>0</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>")
                .unwrap_err()
                .code,
            Code::InvalidArgument
        );
        assert!(complete_multipart(
            b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>"
        )
        .is_err());
    }

    #[test]
    fn bucket_configurations() {
        assert_eq!(
            versioning(
                b"<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>"
            )
            .unwrap(),
            Some(false)
        );
        assert!(versioning(
            b"<VersioningConfiguration><Status>On</Status></VersioningConfiguration>"
        )
        .is_err());
        assert_eq!(location_constraint(b"  ").unwrap(), None);
        assert_eq!(
            location_constraint(b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>")
                .unwrap()
                .as_deref(),
            Some("eu-west-1")
        );
    }
}
