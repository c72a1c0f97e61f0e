//! Named components and their `inputs` → a validated DAG.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{nearest, ComponentSpec, Level};
use crate::plugin::ComponentRole;

/// A topology problem at an offset of the (interpolated) config text.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub level: Level,
    pub offset: usize,
    pub message: String,
    pub help: Option<String>,
}

fn label(spec: &ComponentSpec) -> String {
    format!("{} \"{}\"", spec.role.as_str(), spec.name)
}

/// Every graph problem: duplicate names, dangling inputs, reading from a
/// sink, record kinds a consumer cannot take, cycles, nothing to read from
/// (errors), and components nobody consumes (warnings).
///
/// `invalid` names components that were declared but could not be parsed;
/// they were reported already, so references to them are not.
pub(crate) fn check(
    components: &[ComponentSpec],
    invalid: &BTreeMap<String, ComponentRole>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut by_name: BTreeMap<&str, &ComponentSpec> = BTreeMap::new();
    for spec in components {
        if let Some(first) = by_name.get(spec.name.as_str()) {
            problems.push(Problem {
                level: Level::Error,
                offset: spec.offset,
                message: format!(
                    "{} has the same name as {}; names must be unique across sources, processors and sinks",
                    label(spec),
                    label(first)
                ),
                help: None,
            });
        } else {
            by_name.insert(&spec.name, spec);
        }
    }
    let any_source = components.iter().any(|c| c.role == ComponentRole::Source)
        || invalid.values().any(|r| *r == ComponentRole::Source);
    if !any_source {
        problems.push(Problem {
            level: Level::Error,
            offset: 0,
            message: "the pipeline has no sources".into(),
            help: Some("add a [sources.NAME] table, e.g. type = \"demo\"".into()),
        });
    }
    let mut consumed = BTreeSet::new();
    for spec in components {
        for (input, &offset) in spec.inputs.iter().zip(&spec.input_offsets) {
            if invalid.contains_key(input) {
                continue;
            }
            let Some(producer) = by_name.get(input.as_str()) else {
                let candidates = by_name
                    .values()
                    .filter(|c| c.role != ComponentRole::Sink && c.name != spec.name)
                    .map(|c| c.name.as_str());
                problems.push(Problem {
                    level: Level::Error,
                    offset,
                    message: format!("{}: input \"{input}\" does not exist", label(spec)),
                    help: nearest(input, candidates).map(|n| format!("did you mean \"{n}\"?")),
                });
                continue;
            };
            consumed.insert(producer.name.as_str());
            if producer.role == ComponentRole::Sink {
                problems.push(Problem {
                    level: Level::Error,
                    offset,
                    message: format!(
                        "{}: input \"{input}\" is a sink, which emits nothing",
                        label(spec)
                    ),
                    help: None,
                });
                continue;
            }
            let emits = producer.config.output_kinds();
            let takes = spec.config.input_kinds();
            if !emits.intersects(takes) {
                problems.push(Problem {
                    level: Level::Error,
                    offset,
                    message: format!(
                        "{} takes {takes} but its input {} emits {emits}",
                        label(spec),
                        label(producer)
                    ),
                    help: None,
                });
            }
        }
    }
    if let Some((cycle, offset)) = find_cycle(components, &by_name) {
        problems.push(Problem {
            level: Level::Error,
            offset,
            message: format!("cycle in the pipeline: {}", cycle.join(" → ")),
            help: Some("a component cannot read, directly or not, from itself".into()),
        });
    }
    for spec in components {
        if spec.role != ComponentRole::Sink && !consumed.contains(spec.name.as_str()) {
            problems.push(Problem {
                level: Level::Warning,
                offset: spec.offset,
                message: format!(
                    "{} is not an input of any component; its output is discarded",
                    label(spec)
                ),
                help: None,
            });
        }
    }
    problems
}

fn find_cycle(
    components: &[ComponentSpec],
    by_name: &BTreeMap<&str, &ComponentSpec>,
) -> Option<(Vec<String>, usize)> {
    // Depth-first search with colours; a grey node reached again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&str, Colour> = by_name.keys().map(|k| (*k, Colour::White)).collect();
    fn visit<'a>(
        node: &'a str,
        by_name: &BTreeMap<&'a str, &'a ComponentSpec>,
        colour: &mut BTreeMap<&'a str, Colour>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        colour.insert(node, Colour::Grey);
        path.push(node);
        if let Some(spec) = by_name.get(node) {
            for input in &spec.inputs {
                match colour.get(input.as_str()) {
                    Some(Colour::Grey) => {
                        let start = path.iter().position(|n| *n == input.as_str()).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[start..].iter().rev().map(|s| s.to_string()).collect();
                        cycle.push(cycle[0].clone());
                        return Some(cycle);
                    }
                    Some(Colour::White) => {
                        let input: &'a str =
                            by_name.get_key_value(input.as_str()).map(|(k, _)| *k)?;
                        if let Some(cycle) = visit(input, by_name, colour, path) {
                            return Some(cycle);
                        }
                    }
                    _ => {}
                }
            }
        }
        path.pop();
        colour.insert(node, Colour::Black);
        None
    }
    for spec in components {
        if colour.get(spec.name.as_str()) == Some(&Colour::White) {
            let mut path = Vec::new();
            if let Some(cycle) = visit(&spec.name, by_name, &mut colour, &mut path) {
                return Some((cycle, spec.offset));
            }
        }
    }
    None
}

/// Components in an order where every component comes after its inputs.
pub fn topological_order(components: &[ComponentSpec]) -> Vec<&ComponentSpec> {
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(components.len());
    while order.len() < components.len() {
        let before = order.len();
        for spec in components {
            if !placed.contains(spec.name.as_str())
                && spec.inputs.iter().all(|i| placed.contains(i.as_str()))
            {
                placed.insert(&spec.name);
                order.push(spec);
            }
        }
        if order.len() == before {
            // Only reachable with a cycle, which validation rejects.
            break;
        }
    }
    order
}

/// A printable description of the topology, one component per line.
pub fn describe(components: &[ComponentSpec]) -> String {
    let mut out = String::new();
    for spec in topological_order(components) {
        let consumers: Vec<_> = components
            .iter()
            .filter(|c| c.inputs.contains(&spec.name))
            .map(|c| c.name.as_str())
            .collect();
        out.push_str(&format!(
            "{:<9} {:<20} type={:<14} in=[{}] out=[{}] emits={}\n",
            spec.role.as_str(),
            spec.name,
            spec.type_name,
            spec.inputs.join(", "),
            consumers.join(", "),
            spec.config.output_kinds()
        ));
    }
    out
}
