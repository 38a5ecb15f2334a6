//! Validation helpers shared by every kind: a collector that gathers every problem rather
//! than stopping at the first, and the naming rules (DNS labels and subdomains, label keys
//! and values, HTTP tokens and methods, hostnames) with the phrases that explain them.

use crate::FieldError;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a DNS-1123 label looks like (namespaces, port names, …).
pub const DNS_LABEL: &str =
    "a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";
/// What a DNS-1123 subdomain looks like (resource names, trust domains).
pub const DNS_SUBDOMAIN: &str =
    "a DNS-1123 subdomain: at most 253 characters of lowercase letters, digits, '-' or '.', \
     each dot-separated part starting and ending with a letter or digit";
/// What a label or annotation key looks like (Kubernetes rules, simplified: the prefix is
/// checked as a DNS subdomain, the name as below).
pub const LABEL_KEY: &str =
    "a label key: an optional DNS-1123 subdomain prefix and '/', then a name of 1-63 \
     letters, digits, '-', '_' or '.', starting and ending with a letter or digit";
/// What a label value looks like.
pub const LABEL_VALUE: &str = "a label value: empty, or 1-63 letters, digits, '-', '_' or '.', \
     starting and ending with a letter or digit";
/// What an HTTP header name looks like.
pub const HTTP_TOKEN: &str =
    "an HTTP header name: 1-256 letters, digits or !#$%&'*+-.^_`|~ (an RFC 9110 token)";
/// The methods Gateway API accepts.
pub const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
/// What a hostname looks like.
pub const HOSTNAME: &str = "a hostname: a DNS-1123 subdomain, optionally starting with the wildcard '*.', no port, not an IP";

/// Gathers every problem of one resource.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    list: Vec<FieldError>,
}

impl Problems {
    /// An empty collector.
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records that `value` at `path` is refused; `expected` says what is accepted.
    pub fn add(&mut self, path: impl Into<String>, value: impl Into<String>, expected: &str) {
        self.list.push(FieldError {
            path: path.into(),
            value: value.into(),
            expected: expected.to_string(),
        });
    }

    /// Records a problem unless `ok`.
    pub fn check(
        &mut self,
        ok: bool,
        path: impl Into<String>,
        value: impl ToString,
        expected: &str,
    ) {
        if !ok {
            self.add(path, value.to_string(), expected);
        }
    }

    /// The problems found, in the order found.
    pub fn into_vec(self) -> Vec<FieldError> {
        self.list
    }

    /// `value` must be a DNS-1123 label.
    pub fn dns_label(&mut self, path: impl Into<String>, value: &str) {
        self.check(is_dns_label(value), path, value, DNS_LABEL);
    }

    /// `value` must be a DNS-1123 subdomain.
    pub fn dns_subdomain(&mut self, path: impl Into<String>, value: &str) {
        self.check(is_dns_subdomain(value), path, value, DNS_SUBDOMAIN);
    }

    /// A port number must not be 0.
    pub fn port(&mut self, path: impl Into<String>, port: u16) {
        self.check(port != 0, path, port, "a port from 1 to 65535");
    }

    /// A list may hold at most `max` entries (Gateway API limits).
    pub fn max_items(&mut self, path: &str, len: usize, max: usize) {
        if len > max {
            self.add(
                path,
                format!("{len} entries"),
                &format!("at most {max} entries"),
            );
        }
    }

    /// Each value of `items` (rendered by `show`) may appear once; repeats are reported at
    /// `path[i]` + `field`.
    pub fn unique<T: PartialEq>(
        &mut self,
        path: &str,
        field: &str,
        items: &[T],
        show: impl Fn(&T) -> String,
        expected: &str,
    ) {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                self.add(format!("{path}[{i}]{field}"), show(item), expected);
            }
        }
    }

    /// A duration within `min..=max`; `expected` names the bounds.
    pub fn duration(
        &mut self,
        path: &str,
        d: Duration,
        min: Duration,
        max: Duration,
        expected: &str,
    ) {
        self.check(
            (min..=max).contains(&d),
            path,
            crate::duration::format(d),
            expected,
        );
    }

    /// Kubernetes label keys and values.
    pub fn labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        for (key, value) in labels {
            self.check(is_label_key(key), format!("{path}.{key}"), key, LABEL_KEY);
            self.check(
                is_label_value(value),
                format!("{path}.{key}"),
                value,
                LABEL_VALUE,
            );
        }
    }

    /// A hostname, optionally with a leading `*.` wildcard.
    pub fn hostname(&mut self, path: impl Into<String>, host: &str) {
        self.check(is_hostname(host), path, host, HOSTNAME);
    }

    /// An HTTP method Gateway API accepts.
    pub fn method(&mut self, path: impl Into<String>, method: &str) {
        let expected = format!("an HTTP method: one of {}", HTTP_METHODS.join(", "));
        self.check(HTTP_METHODS.contains(&method), path, method, &expected);
    }
}

/// 1-63 lowercase letters, digits or `-`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS labels, at most 253 characters in all.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A DNS subdomain with an optional leading `*.`, not an IP address.
pub fn is_hostname(s: &str) -> bool {
    let bare = s.strip_prefix("*.").unwrap_or(s);
    is_dns_subdomain(bare) && s.parse::<std::net::IpAddr>().is_err()
}

/// An RFC 9110 token of at most 256 characters (header names).
pub fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// The name part of a label key, or a non-empty label value: 1-63 letters, digits, `-`, `_`
/// or `.`, starting and ending alphanumeric.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `[prefix/]name` with a DNS-subdomain prefix.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

/// Empty, or a label name.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, the shape of an RFC 3339 timestamp (ranges of the
/// numbers are not checked: the store writes these, this only refuses garbage).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date = digits(0..4) && at(4, b'-') && digits(5..7) && at(7, b'-') && digits(8..10);
    let separator = matches!(b.get(10), Some(b'T' | b't'));
    let time = digits(11..13) && at(13, b':') && digits(14..16) && at(16, b':') && digits(17..19);
    if !(date && separator && time) {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return false;
        }
        i += 1 + frac;
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', ..] => {
            b.len() == i + 6 && digits(i + 1..i + 3) && at(i + 3, b':') && digits(i + 4..i + 6)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_label("restaurant-v1"));
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("restaurant.v1"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain(&format!("{}.a", "a".repeat(253))));
    }

    #[test]
    fn label_keys_and_values() {
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("Version_2"));
        for bad in ["", "/a", "a/", "Bad_Prefix/a", "-a", "a/b/c"] {
            assert!(!is_label_key(bad), "{bad}");
        }
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_beta-3"));
        assert!(!is_label_value("has space"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn hostnames_tokens_and_timestamps() {
        assert!(is_hostname("*.example.com"));
        assert!(is_hostname("restaurant"));
        assert!(!is_hostname("10.0.0.1"));
        assert!(!is_hostname("a.*.com"));
        assert!(!is_hostname("host:80"));
        assert!(is_http_token("x-canary"));
        assert!(!is_http_token("x canary"));
        assert!(!is_http_token(""));
        for good in ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.123+02:00"] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T10:00:00",
            "2024-05-01T10:00:00.Z",
            "yesterday",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
