//! Document text: the one check that a document's bytes are text (UTF-8), for every layer that
//! reads documents (files and stdin to ingest, SAE corpora, streamed uploads). Each layer words
//! the refusal its own way from the structured error.

/// Bytes that are not UTF-8 text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name} is not utf-8 text (invalid byte at offset {offset})")]
pub struct NotUtf8 {
    /// Where the bytes came from (a path, `stdin`).
    pub source_name: String,
    /// The offset of the first invalid byte.
    pub offset: usize,
}

/// Returns `bytes` as text, or an error naming `source_name` and the first invalid byte.
pub fn document_text(bytes: Vec<u8>, source_name: &str) -> Result<String, NotUtf8> {
    String::from_utf8(bytes).map_err(|e| NotUtf8 {
        source_name: source_name.to_string(),
        offset: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_passes_and_other_bytes_name_the_first_bad_one() {
        assert_eq!(document_text("héllo".into(), "a").unwrap(), "héllo");
        let e = document_text(vec![b'o', b'k', 0xff, 0xfe], "x.txt").unwrap_err();
        assert_eq!(e.offset, 2);
        assert_eq!(
            e.to_string(),
            "x.txt is not utf-8 text (invalid byte at offset 2)"
        );
        // A multi-byte char cut short: the offset is where it starts.
        let e = document_text(vec![b'h', b'i', 0xc3], "y").unwrap_err();
        assert_eq!(e.offset, 2);
    }
}
