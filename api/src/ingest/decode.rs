//! Request framing: `Content-Type` to body format, `Content-Encoding` decoding with
//! a bound on the decompressed size (so a small gzip bomb cannot fill memory).

use std::io::Read;

use bytes::Bytes;

use super::parse::BodyFormat;
use crate::error::ApiError;
use crate::request_memory::{self, DECODE_STEP, MemoryGrant};

/// Picks the body format from the media type. No media type is treated as JSON, since
/// `navigator.sendBeacon` with a string body sends `text/plain` and some trackers send
/// nothing. Text is read as UTF-8: a `charset` parameter naming anything else (UTF-16,
/// Latin-1) is refused rather than misread.
pub fn body_format(content_type: Option<&str>) -> Result<BodyFormat, ApiError> {
    let Some(ct) = content_type else { return Ok(BodyFormat::Json) };
    let mut params = ct.split(';');
    let essence = params.next().unwrap_or("").trim().to_ascii_lowercase();
    for param in params {
        let Some((name, value)) = param.split_once('=') else { continue };
        let value = value.trim().trim_matches('"').to_ascii_lowercase();
        if name.trim().eq_ignore_ascii_case("charset") && !matches!(value.as_str(), "utf-8" | "utf8" | "us-ascii") {
            return Err(ApiError::UnsupportedMediaType {
                detail: format!("charset {value:?} is not accepted; send the body as UTF-8"),
            });
        }
    }
    match essence.as_str() {
        "" | "application/json" | "text/plain" | "text/json" => Ok(BodyFormat::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Ok(BodyFormat::Ndjson),
        "application/octet-stream" => Ok(BodyFormat::Binary),
        e if e.starts_with("application/") && e.ends_with("+json") => Ok(BodyFormat::Json),
        other => Err(ApiError::UnsupportedMediaType {
            detail: format!(
                "content type {other:?} is not accepted; use application/json, text/plain, \
                 application/x-ndjson or application/octet-stream"
            ),
        }),
    }
}

/// The value of a header that must appear at most once and be readable text
/// (`Content-Type`, `Content-Encoding`): 415 when it is sent twice (two encodings
/// would mean the body was encoded twice) or holds bytes other than visible ASCII.
pub fn single_header(headers: &axum::http::HeaderMap, name: axum::http::HeaderName) -> Result<Option<&str>, ApiError> {
    one_value(headers, name.as_str()).map_err(|fault| ApiError::UnsupportedMediaType {
        detail: match fault {
            HeaderFault::Repeated => format!("send one {name} header, not several"),
            HeaderFault::NotText => format!("the {name} header is not readable text"),
        },
    })
}

/// Why a header that must appear at most once, as visible ASCII, cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    /// Sent more than once.
    Repeated,
    /// Holds bytes other than visible ASCII (space and tab allowed).
    NotText,
}

/// The value of header `name` sent at most once, as text; each caller answers the
/// [`HeaderFault`] with its own error (415 for the body's headers, 401 for credentials,
/// 400 for `Idempotency-Key`).
pub fn one_value<'h>(headers: &'h axum::http::HeaderMap, name: &str) -> Result<Option<&'h str>, HeaderFault> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(HeaderFault::Repeated);
    }
    value.to_str().map(Some).map_err(|_| HeaderFault::NotText)
}

/// Undoes `Content-Encoding` (gzip, deflate, br, identity), refusing output larger
/// than `max_bytes`. The request's reservation in `request_memory_bytes` (`grant`) grows
/// ahead of the output's buffer, so decoding never holds memory the budget did not
/// grant (503 `overloaded` when it has no room; see [`crate::request_memory`]).
pub fn decode_body(
    encoding: Option<&str>,
    body: Bytes,
    max_bytes: usize,
    grant: Option<&MemoryGrant>,
) -> Result<Bytes, ApiError> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
    let reader: Box<dyn Read + '_> = match encoding.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        // HTTP's "deflate" is zlib-wrapped; some clients send raw deflate instead.
        "deflate" if looks_like_zlib(&body) => Box::new(flate2::read::ZlibDecoder::new(&body[..])),
        "deflate" => Box::new(flate2::read::DeflateDecoder::new(&body[..])),
        "br" => Box::new(brotli::Decompressor::new(&body[..], 64 * 1024)),
        other => {
            return Err(ApiError::UnsupportedMediaType {
                detail: format!("content encoding {other:?} is not accepted; use gzip, deflate, br or identity"),
            });
        }
    };
    let limit = max_bytes + 1;
    let mut reader = reader.take(limit as u64);
    let mut out: Vec<u8> = Vec::new();
    loop {
        // Room for the next step, the buffer doubling as a Vec would (so copies stay
        // linear), reserved before it is allocated; the compressed body is held too.
        let want = (out.len() + DECODE_STEP).min(limit);
        if want > out.capacity() {
            let capacity = (out.capacity() * 2).max(want).min(limit);
            request_memory::cover(grant, body.len() + capacity)?;
            out.reserve_exact(capacity - out.len());
        }
        let step = (want - out.len()) as u64;
        match (&mut reader).take(step).read_to_end(&mut out) {
            Ok(0) => break,
            Ok(_) if out.len() >= limit => break,
            Ok(_) => {}
            Err(e) => return Err(ApiError::invalid("invalid_encoding", format!("body is not valid {encoding}: {e}"))),
        }
    }
    if out.len() > max_bytes {
        return Err(body_too_large(max_bytes));
    }
    Ok(Bytes::from(out))
}

/// The 413 for a body over `max_body_bytes`.
pub fn body_too_large(max_bytes: usize) -> ApiError {
    ApiError::TooLarge {
        code: "body_too_large",
        detail: format!("the request body is larger than {max_bytes} bytes (after decompression)"),
        limit: max_bytes as u64,
        setting: "max_body_bytes",
        index: None,
    }
}

fn looks_like_zlib(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] & 0x0f == 8 && (u16::from(b[0]) << 8 | u16::from(b[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn text_is_utf_8_whatever_the_media_type() {
        for ok in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "text/plain; charset=us-ascii",
        ] {
            assert!(matches!(body_format(Some(ok)), Ok(BodyFormat::Json)), "{ok}");
        }
        for refused in ["text/plain; charset=utf-16", "application/json;charset=ISO-8859-1"] {
            assert!(matches!(body_format(Some(refused)), Err(ApiError::UnsupportedMediaType { .. })), "{refused}");
        }
    }

    #[test]
    fn every_encoding_round_trips() {
        let data = b"[{\"a\":1}]".repeat(50);
        let g = decode_body(Some("gzip"), Bytes::from(gzip(&data)), 1 << 20, None).unwrap();
        assert_eq!(&g[..], &data[..]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).unwrap();
        let d = decode_body(Some("deflate"), Bytes::from(z.finish().unwrap()), 1 << 20, None).unwrap();
        assert_eq!(&d[..], &data[..]);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&data).unwrap();
        let d = decode_body(Some("deflate"), Bytes::from(raw.finish().unwrap()), 1 << 20, None).unwrap();
        assert_eq!(&d[..], &data[..]);
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22).write_all(&data).unwrap();
        let b = decode_body(Some("br"), Bytes::from(br), 1 << 20, None).unwrap();
        assert_eq!(&b[..], &data[..]);
    }

    #[test]
    fn bombs_bad_data_and_unknown_encodings_are_refused() {
        let bomb = gzip(&vec![b' '; 10 << 20]);
        assert!(bomb.len() < 64 << 10);
        assert!(matches!(
            decode_body(Some("gzip"), Bytes::from(bomb), 1 << 20, None),
            Err(ApiError::TooLarge { code: "body_too_large", .. })
        ));
        assert!(matches!(
            decode_body(Some("gzip"), Bytes::from_static(b"not gzip"), 1 << 20, None),
            Err(ApiError::InvalidRequest { code: "invalid_encoding", .. })
        ));
        assert!(matches!(
            decode_body(Some("zstd"), Bytes::from_static(b"x"), 10, None),
            Err(ApiError::UnsupportedMediaType { .. })
        ));
    }

    #[tokio::test]
    async fn decoding_grows_the_reservation_ahead_of_its_output_within_the_budget() {
        use crate::request_memory::{MemoryGrant, RequestMemory};
        use axum::http::Method;
        let data = vec![b'7'; 1 << 20];
        let packed = gzip(&data);
        // The reservation of the body as sent, as the connection loop makes it.
        let received = |m: &RequestMemory| -> MemoryGrant {
            let (grant, _) = m.meter(&Method::POST).unwrap();
            grant.cover(packed.len()).unwrap();
            grant
        };
        // A budget of 256 KiB: decoding 1 MiB stops at the budget, 503 overloaded.
        let small = RequestMemory::new(256 << 10, 256 << 10, std::time::Duration::ZERO);
        let grant = received(&small);
        let refused = decode_body(Some("gzip"), Bytes::from(packed.clone()), 2 << 20, Some(&grant));
        assert!(matches!(refused, Err(ApiError::Overloaded { .. })));
        assert!(small.reserved_bytes() <= small.budget_bytes());
        // With room, the same body decodes; what it holds covers the output's buffer.
        let roomy = RequestMemory::new(8 << 20, 2 << 20, std::time::Duration::ZERO);
        let grant = received(&roomy);
        let decoded = decode_body(Some("gzip"), Bytes::from(packed.clone()), 2 << 20, Some(&grant)).unwrap();
        assert_eq!(&decoded[..], &data[..]);
        assert!(grant.bytes() >= (packed.len() + data.len()) as u64, "{} bytes held", grant.bytes());
        assert!(grant.bytes() <= (packed.len() + 2 * data.len()) as u64 + 1024, "{} bytes held", grant.bytes());
    }

    #[test]
    fn media_types_map_to_formats() {
        assert_eq!(body_format(None).unwrap(), BodyFormat::Json);
        assert_eq!(body_format(Some("text/plain;charset=UTF-8")).unwrap(), BodyFormat::Json);
        assert_eq!(body_format(Some("application/vnd.x+json")).unwrap(), BodyFormat::Json);
        assert_eq!(body_format(Some("application/x-ndjson")).unwrap(), BodyFormat::Ndjson);
        assert_eq!(body_format(Some("application/octet-stream")).unwrap(), BodyFormat::Binary);
        assert!(body_format(Some("application/xml")).is_err());
        assert!(body_format(Some("multipart/form-data; boundary=x")).is_err());
    }
}
