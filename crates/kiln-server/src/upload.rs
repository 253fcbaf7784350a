//! Bounded reading of `multipart/form-data`. Each file field has its own
//! byte cap, checked while streaming, so an oversize upload is refused
//! without being read whole; text fields are small.

use crate::error::ApiError;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;

/// Largest text field (such as `conf`), in bytes.
pub const MAX_TEXT_FIELD_BYTES: u64 = 1024 * 1024 + 1024;
/// Room for multipart boundaries and text fields on top of the files.
pub const FORM_OVERHEAD_BYTES: u64 = 2 * 1024 * 1024;

/// The fields of a form, read completely.
#[derive(Debug, Default)]
pub struct Form {
    texts: HashMap<String, String>,
    files: HashMap<String, Bytes>,
}

impl Form {
    /// The text field `name`, if the form had it.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.texts.get(name).map(String::as_str)
    }

    /// The text field `name`, or 400 `missing_field`.
    pub fn required_text(&self, name: &str) -> Result<&str, ApiError> {
        self.text(name).ok_or_else(|| {
            ApiError::bad_request(
                "missing_field",
                format!("the form field {name:?} is required"),
            )
        })
    }

    /// Takes the file field `name` out of the form, if it had it.
    pub fn take_file(&mut self, name: &str) -> Option<Bytes> {
        self.files.remove(name)
    }

    /// Takes the file field `name` out of the form, or 400 `missing_field`.
    pub fn required_file(&mut self, name: &str) -> Result<Bytes, ApiError> {
        self.take_file(name).ok_or_else(|| {
            ApiError::bad_request(
                "missing_field",
                format!("the file field {name:?} is required"),
            )
        })
    }
}

/// Which fields are files, and the most bytes each may hold.
pub struct FormSpec<'a> {
    /// The file fields, each with its cap in bytes; any other field is text,
    /// capped at [`MAX_TEXT_FIELD_BYTES`].
    pub files: &'a [(&'a str, u64)],
    /// Fields refused outright, by name prefix: the whole request gets 422
    /// with this code and sentence before the field is read.
    pub refused: &'a [Refused<'a>],
    /// The text fields the form has, when it names them: any other field
    /// is refused (422 `unknown_field`), as a misspelt one would be lost.
    pub texts: Option<&'a [&'a str]>,
}

/// A field a form must not carry.
pub struct Refused<'a> {
    /// Fields whose name starts with this are refused.
    pub prefix: &'a str,
    /// The error code of the 422 answer.
    pub code: &'static str,
    /// The message of the 422 answer.
    pub sentence: &'a str,
}

impl<'a> FormSpec<'a> {
    /// These file fields, each with its cap in bytes; any other field is
    /// taken as text, and none is refused.
    pub const fn files(files: &'a [(&'a str, u64)]) -> Self {
        Self {
            files,
            refused: &[],
            texts: None,
        }
    }

    fn file_limit(&self, name: &str) -> Option<u64> {
        self.files
            .iter()
            .find(|(file, _)| *file == name)
            .map(|(_, limit)| *limit)
    }

    fn refusal(&self, name: &str) -> Option<ApiError> {
        if let Some(refused) = self.refused.iter().find(|r| name.starts_with(r.prefix)) {
            return Some(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                refused.code,
                refused.sentence.to_owned(),
            ));
        }
        let texts = self.texts?;
        let known = texts.contains(&name) || self.file_limit(name).is_some();
        (!known).then(|| {
            let mut fields: Vec<&str> = texts.to_vec();
            fields.extend(self.files.iter().map(|(file, _)| *file));
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_field",
                format!(
                    "the form has no field {name:?}; its fields are {}",
                    fields.join(", ")
                ),
            )
        })
    }
}

/// Reads a multipart body into a [`Form`]; fields the spec does not know
/// are refused when it names its text fields, and ignored otherwise; a
/// repeated field is an error.
pub async fn read_form(
    multipart: Result<Multipart, MultipartRejection>,
    spec: &FormSpec<'_>,
) -> Result<Form, ApiError> {
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be multipart/form-data",
        )
    })?;
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        if form.texts.contains_key(&name) || form.files.contains_key(&name) {
            return Err(ApiError::bad_request(
                "duplicate_field",
                format!("the form field {name:?} appears twice"),
            ));
        }
        if let Some(refusal) = spec.refusal(&name) {
            // Read the rest (within the body limit) before answering: a
            // client still sending would see its connection cut instead.
            while multipart.next_field().await.ok().flatten().is_some() {}
            return Err(refusal);
        }
        match spec.file_limit(&name) {
            Some(limit) => {
                let bytes = read_field(field, &name, limit).await?;
                form.files.insert(name, bytes);
            }
            None => {
                let bytes = read_field(field, &name, MAX_TEXT_FIELD_BYTES).await?;
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_field",
                        format!("the form field {name:?} must be UTF-8 text"),
                    )
                })?;
                form.texts.insert(name, text);
            }
        }
    }
    Ok(form)
}

async fn read_field(mut field: Field<'_>, name: &str, limit: u64) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::too_large(format!(
                "the field {name:?} is larger than the limit of {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("the request body is larger than the upload limit")
    } else {
        ApiError::bad_request(
            "malformed_multipart",
            format!("the multipart body is malformed: {}", e.body_text()),
        )
    }
}

/// Refuses a request whose declared `Content-Length` is over `limit` before
/// a byte of it is read.
pub async fn refuse_declared_oversize(
    limit: u64,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > limit) {
        return Err(ApiError::too_large(format!(
            "the request body ({length} bytes) is larger than the limit of {limit} bytes"
        )));
    }
    Ok(next.run(request).await)
}
