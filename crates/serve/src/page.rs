//! The web page and its Content-Security-Policy. The page's script and
//! style are inline (one self-contained file, no CDN), so the policy names
//! them by their sha256 rather than allowing inline code: an injected
//! `<script>` or `on*=` attribute would not run.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};
use base64::Engine;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("../page/index.html");

/// The policy of every answer but the page: nothing may load, nothing may
/// frame it.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The page's policy: its own inline script and style by hash, its photo
/// preview (a `blob:` URL), its `data:` favicon, and `fetch` to its own
/// origin; no framing, no `<base>`, no form posts.
static PAGE_CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hashes = |tag: &str| {
        inline_blocks(PAGE, tag)
            .into_iter()
            .map(|block| format!("'sha256-{}'", sha256_base64(block)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; img-src 'self' blob: data:; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes("script"),
        hashes("style"),
    );
    HeaderValue::from_str(&policy).expect("the policy is ASCII")
});

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP.clone()),
        ],
        Html(PAGE),
    )
}

/// The text between each `<tag>` and `</tag>` (the page's tags carry no
/// attributes), exactly as the browser hashes it.
fn inline_blocks<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    html.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once(close.as_str()).map(|(block, _)| block))
        .collect()
}

fn sha256_base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_page_script_and_style_by_hash_and_allows_no_inline_code() {
        let policy = PAGE_CSP.to_str().unwrap();
        assert_eq!(inline_blocks(PAGE, "script").len(), 1);
        assert_eq!(inline_blocks(PAGE, "style").len(), 1);
        assert!(policy.contains("script-src 'sha256-"), "{policy}");
        assert!(policy.contains("style-src 'sha256-"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        // Inline style attributes would be blocked (and logged) under it.
        assert!(
            !PAGE.contains(" style=\""),
            "inline style attribute in the page"
        );
    }

    #[test]
    fn the_hash_is_the_standard_base64_sha256() {
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            sha256_base64("alert(1)"),
            "bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI="
        );
    }
}
