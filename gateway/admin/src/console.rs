//! The console: a web page on the admin listener (`/ui/`) that drives the admin API.
//!
//! Its files are public (a browser cannot send a bearer token when it loads a page) and hold no
//! data: every call they make to the API carries the token the operator typed, in the
//! `Authorization` header. They are embedded in the binary and served with a Content-Security-
//! Policy that allows scripts, styles and connections from this origin only and no inline script.

/// Where the console lives on the admin listener.
pub const PREFIX: &str = "/ui/";

/// The policy every console file is served with: its own files only, no inline script or style,
/// no frames, forms posting nowhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One file of the console.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../ui/index.html"),
};

/// The console's file at `path` (a request path under [`PREFIX`]), if there is one.
pub fn asset(path: &str) -> Option<Asset> {
    let name = path.strip_prefix(PREFIX)?;
    Some(match name {
        "" | "index.html" => INDEX,
        "console.js" => Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_bytes!("../ui/console.js"),
        },
        "console.css" => Asset {
            content_type: "text/css; charset=utf-8",
            body: include_bytes!("../ui/console.css"),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_runs_no_inline_script_or_style_and_loads_only_its_own_files() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        // every <script> has a src of its own folder, and no attribute runs code
        for tag in html.split("<script").skip(1) {
            let head = &tag[..tag.find('>').unwrap()];
            assert!(head.contains("src=\"console.js\""), "{head}");
            assert!(tag[tag.find('>').unwrap() + 1..].starts_with("</script>"));
        }
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        assert!(
            !html.to_ascii_lowercase().contains(" on"),
            "an inline handler"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "an outside file"
        );
        let js = std::str::from_utf8(asset("/ui/console.js").unwrap().body).unwrap();
        assert!(!js.contains("innerHTML") && !js.contains("eval("));
        assert!(!js.contains("document.cookie"));
        let css = std::str::from_utf8(asset("/ui/console.css").unwrap().body).unwrap();
        assert!(!css.contains("url("), "the styles load nothing");
    }

    #[test]
    fn only_the_console_files_are_served() {
        assert!(asset("/ui/").is_some());
        assert!(asset("/ui/index.html").is_some());
        for path in [
            "/ui",
            "/ui/../status",
            "/ui/x.js",
            "/ui/console.js/",
            "/status",
            "/ui//console.js",
        ] {
            assert!(asset(path).is_none(), "{path}");
        }
    }
}
