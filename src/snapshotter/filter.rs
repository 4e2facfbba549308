//! containerd's filter syntax for `Walk`/`List`: each filter string is a
//! comma-separated conjunction of selectors (`field`, `field==value`,
//! `field!=value`, `field~=regex`, field paths dotted, names and values
//! optionally double-quoted); a snapshot matches if any filter matches.

use regex::Regex;

/// Why a filter string was refused.
#[derive(Debug, thiserror::Error)]
#[error("filter {filter:?}: {reason}")]
pub struct FilterError {
    filter: String,
    reason: String,
}

/// What a selector tests.
#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed list of filters (any may match).
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

/// Gives a selector's field path its value, and whether it is present.
pub trait Fields {
    /// The value at `path`, if the object has it.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl Filters {
    /// Parses containerd filter strings; none (or only empty ones) match
    /// everything.
    pub fn parse(filters: &[String]) -> Result<Filters, FilterError> {
        let mut out = Vec::new();
        for filter in filters.iter().filter(|f| !f.trim().is_empty()) {
            out.push(parse_one(filter).map_err(|reason| FilterError {
                filter: filter.clone(),
                reason,
            })?);
        }
        Ok(Filters(out))
    }

    /// Whether `object` passes.
    pub fn matches(&self, object: &impl Fields) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|all| all.iter().all(|s| selector_matches(s, object)))
    }
}

fn selector_matches(s: &Selector, object: &impl Fields) -> bool {
    let value = object.field(&s.path);
    match &s.op {
        Op::Present => value.is_some(),
        Op::Equal(v) => value.as_deref() == Some(v.as_str()),
        // As in containerd: an absent field has the empty value here.
        Op::NotEqual(v) => value.unwrap_or_default() != *v,
        Op::Matches(re) => re.is_match(&value.unwrap_or_default()),
    }
}

struct Scanner<'a> {
    rest: &'a str,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn eat(&mut self, s: &str) -> bool {
        if let Some(r) = self.rest.strip_prefix(s) {
            self.rest = r;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".into())
    }

    /// A field name: quoted, or a run of identifier characters.
    fn field(&mut self) -> Result<String, String> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return Err(format!("expected a field name at {:?}", self.rest));
        }
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(name.to_string())
    }

    /// A value: quoted, or everything up to the next comma.
    fn value(&mut self) -> Result<String, String> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let end = self.rest.find(',').unwrap_or(self.rest.len());
        let (value, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(value.trim().to_string())
    }
}

fn parse_one(filter: &str) -> Result<Vec<Selector>, String> {
    let mut scan = Scanner { rest: filter };
    let mut selectors = Vec::new();
    loop {
        scan.skip_spaces();
        let mut path = vec![scan.field()?];
        while scan.eat(".") {
            path.push(scan.field()?);
        }
        scan.skip_spaces();
        let op = if scan.eat("==") {
            Op::Equal(scan.value()?)
        } else if scan.eat("!=") {
            Op::NotEqual(scan.value()?)
        } else if scan.eat("~=") {
            let pattern = scan.value()?;
            Op::Matches(Regex::new(&pattern).map_err(|e| e.to_string())?)
        } else {
            Op::Present
        };
        selectors.push(Selector { path, op });
        scan.skip_spaces();
        if scan.rest.is_empty() {
            return Ok(selectors);
        }
        if !scan.eat(",") {
            return Err(format!("expected ',' at {:?}", scan.rest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Obj(BTreeMap<&'static str, &'static str>);

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|v| v.to_string())
        }
    }

    fn matches(filters: &[&str], obj: &Obj) -> bool {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        Filters::parse(&filters).unwrap().matches(obj)
    }

    #[test]
    fn selectors_conjunctions_and_alternatives() {
        let obj = Obj(BTreeMap::from([
            ("name", "a-wl"),
            ("kind", "active"),
            ("parent", ""),
            ("labels.containerd.io/gc.root", "check-walk"),
            ("labels.l", "2"),
        ]));
        assert!(matches(&[], &obj));
        assert!(matches(&["name==a-wl,labels.l"], &obj));
        assert!(matches(
            &["kind==active,labels.\"containerd.io/gc.root\"==check-walk"],
            &obj
        ));
        assert!(!matches(&["kind==view"], &obj));
        assert!(matches(&["kind==view", "labels.l==2"], &obj));
        assert!(!matches(&["parent!=\"\""], &obj));
        assert!(!matches(&["labels.missing"], &obj));
        assert!(matches(&["name~=^a-"], &obj));
        assert!(Filters::parse(&["name==\"open".to_string()]).is_err());
    }
}
