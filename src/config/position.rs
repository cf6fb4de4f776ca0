//! Maps field paths (`policies[3].rules[0].host`) to their line and column in the YAML
//! text, so every error can point at the line to fix. serde drops positions once a value is
//! parsed; this walks the parser's events once and remembers where each key and sequence
//! element starts.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScanError};

use super::join_path;

/// A line and column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next; `None` while a key is expected.
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Debug, Default)]
pub struct PositionIndex {
    positions: HashMap<String, Position>,
}

impl PositionIndex {
    /// Indexes the first document. A syntax error is returned with its position.
    pub fn build(text: &str) -> Result<PositionIndex, (String, Position)> {
        let mut positions = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(event) = parser.next_event() {
            let (event, span) = event.map_err(|e: ScanError| {
                let marker = e.marker();
                (
                    e.info().to_owned(),
                    Position {
                        line: marker.line(),
                        column: marker.col() + 1,
                    },
                )
            })?;
            let here = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            let starts_node = matches!(
                event,
                Event::Scalar(..)
                    | Event::Alias(_)
                    | Event::MappingStart(..)
                    | Event::SequenceStart(..)
            );
            if starts_node {
                // Where does this node sit: a key, a value under a key, or a list element?
                let node_path = match stack.last_mut() {
                    None => Some(String::new()),
                    Some(Frame::Map { path, key }) => match key.take() {
                        None => {
                            if let Event::Scalar(name, ..) = &event {
                                let full = join_path(path, name);
                                positions.entry(full).or_insert(here);
                                *key = Some(name.to_string());
                            } else {
                                // A complex key: never used by our config; index nothing.
                                *key = Some("?".into());
                            }
                            None
                        }
                        Some(name) => Some(join_path(path, &name)),
                    },
                    Some(Frame::Seq { path, next }) => {
                        let full = format!("{path}[{next}]");
                        *next += 1;
                        positions.entry(full.clone()).or_insert(here);
                        Some(full)
                    }
                };
                if let Some(node_path) = node_path {
                    match event {
                        Event::MappingStart(..) => stack.push(Frame::Map {
                            path: node_path,
                            key: None,
                        }),
                        Event::SequenceStart(..) => stack.push(Frame::Seq {
                            path: node_path,
                            next: 0,
                        }),
                        _ => {}
                    }
                } else if let Event::MappingStart(..) | Event::SequenceStart(..) = event {
                    // A complex key's own structure: track it so the nesting stays right.
                    stack.push(Frame::Seq {
                        path: "?".into(),
                        next: 0,
                    });
                }
            }
            match event {
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::DocumentEnd => break,
                _ => {}
            }
        }
        Ok(PositionIndex { positions })
    }

    /// The position of `path`, or of its nearest indexed ancestor.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(position) = self.positions.get(path) {
                return Some(*position);
            }
            if path.is_empty() {
                return None;
            }
            let cut = path.rfind(['.', '[']).unwrap_or(0);
            path = &path[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_elements() {
        let text = "\
gateway:
  tags: [env:dev]
policies:
  - name: a
    rules:
      - host: x.example
        paths: [\"/a\", \"/b\"]
  - name: b
    rules:
      - { host: y.example }
";
        let index = PositionIndex::build(text).unwrap();
        let at = |p: &str| index.find(p).map(|pos| pos.line);
        assert_eq!(at("gateway.tags"), Some(2));
        assert_eq!(at("policies[0]"), Some(4));
        assert_eq!(at("policies[0].rules[0].host"), Some(6));
        assert_eq!(at("policies[0].rules[0].paths[1]"), Some(7));
        assert_eq!(at("policies[1].name"), Some(8));
        assert_eq!(at("policies[1].rules[0].host"), Some(10));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(at("policies[1].rules[0].nope"), Some(10));
        assert_eq!(at("policies[1].frobnicate"), Some(8));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let (_, pos) = PositionIndex::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(pos.line >= 1);
    }
}
