//! An error with every cause under it, on one line: what a log line or a
//! status message must say, since the top error alone often names only
//! the step that failed ("network error after 4 attempts"), not why.

use std::error::Error;

/// `err` and each of its sources, joined by ": ".
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_cause_is_said_once() {
        let io = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(io);
        assert_eq!(super::chain(&outer), "connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("fetching the TOC")]
        struct Fetch(#[source] std::io::Error);
        let err = Fetch(std::io::Error::other("tls handshake eof"));
        assert_eq!(super::chain(&err), "fetching the TOC: tls handshake eof");
    }
}
