//! Named components and their `inputs` → a validated DAG.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::config::{nearest, ComponentSpec, Level};
use crate::plugin::{ComponentConfig, ComponentRole};
use crate::record::RecordKinds;

/// A topology problem at an offset of the (interpolated) config text.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub level: Level,
    pub offset: usize,
    pub message: String,
    pub help: Option<String>,
}

/// What the graph check still knows of a component whose table has errors:
/// its name, role and inputs place it in the graph even though its plugin
/// options could not be parsed, so its graph problems are reported in the
/// same pass as its field errors rather than only once those are fixed.
#[derive(Debug, Clone)]
pub(crate) struct Unparsed {
    pub name: String,
    pub role: ComponentRole,
    pub offset: usize,
    pub inputs: Vec<String>,
    pub input_offsets: Vec<usize>,
}

/// One declared component as the graph sees it, parsed or not.
struct Node<'a> {
    name: &'a str,
    role: ComponentRole,
    offset: usize,
    inputs: &'a [String],
    input_offsets: &'a [usize],
    /// `None` when its options did not parse: what it takes and emits is
    /// then unknown, so kind checks involving it are skipped.
    config: Option<&'a dyn ComponentConfig>,
}

impl Node<'_> {
    fn label(&self) -> String {
        format!("{} \"{}\"", self.role.as_str(), self.name)
    }
}

/// Every declared component in file order, parsed or not.
fn nodes<'a>(components: &'a [ComponentSpec], unparsed: &'a [Unparsed]) -> Vec<Node<'a>> {
    let parsed = components.iter().map(|spec| Node {
        name: &spec.name,
        role: spec.role,
        offset: spec.offset,
        inputs: &spec.inputs,
        input_offsets: &spec.input_offsets,
        config: Some(spec.config.as_ref()),
    });
    let unparsed = unparsed.iter().map(|u| Node {
        name: &u.name,
        role: u.role,
        offset: u.offset,
        inputs: &u.inputs,
        input_offsets: &u.input_offsets,
        config: None,
    });
    let mut nodes: Vec<Node<'a>> = parsed.chain(unparsed).collect();
    nodes.sort_by_key(|n| n.offset);
    nodes
}

/// Every graph problem: duplicate names, dangling inputs, reading from a
/// sink, record kinds a consumer cannot take, cycles, nothing to read from
/// (errors), and components nobody consumes (warnings).
///
/// `unparsed` are components that were declared but whose options could not
/// be parsed (already reported): their inputs are checked too, and
/// references to them are not reported as missing.
pub(crate) fn check(components: &[ComponentSpec], unparsed: &[Unparsed]) -> Vec<Problem> {
    let nodes = nodes(components, unparsed);
    let mut problems = Vec::new();
    let mut by_name: BTreeMap<&str, &Node<'_>> = BTreeMap::new();
    for node in &nodes {
        if let Some(first) = by_name.get(node.name) {
            problems.push(Problem {
                level: Level::Error,
                offset: node.offset,
                message: format!(
                    "{} has the same name as {}; names must be unique across sources, processors and sinks",
                    node.label(),
                    first.label()
                ),
                help: None,
            });
        } else {
            by_name.insert(node.name, node);
        }
    }
    if !nodes.iter().any(|n| n.role == ComponentRole::Source) {
        problems.push(Problem {
            level: Level::Error,
            offset: 0,
            message: "the pipeline has no sources".into(),
            help: Some("add a [sources.NAME] table, e.g. type = \"demo\"".into()),
        });
    }
    let mut consumed = BTreeSet::new();
    for node in &nodes {
        for (input, &offset) in node.inputs.iter().zip(node.input_offsets) {
            let Some(producer) = by_name.get(input.as_str()) else {
                let candidates = by_name
                    .values()
                    .filter(|c| c.role != ComponentRole::Sink && c.name != node.name)
                    .map(|c| c.name);
                problems.push(Problem {
                    level: Level::Error,
                    offset,
                    message: format!("{}: input \"{input}\" does not exist", node.label()),
                    help: nearest(input, candidates).map(|n| format!("did you mean \"{n}\"?")),
                });
                continue;
            };
            consumed.insert(producer.name);
            if producer.role == ComponentRole::Sink {
                problems.push(Problem {
                    level: Level::Error,
                    offset,
                    message: format!(
                        "{}: input \"{input}\" is a sink, which emits nothing",
                        node.label()
                    ),
                    help: None,
                });
                continue;
            }
            let (Some(consumer), Some(producer_config)) = (node.config, producer.config) else {
                continue;
            };
            let emits = producer_config.output_kinds();
            let takes = consumer.input_kinds();
            if !emits.intersects(takes) {
                problems.push(Problem {
                    level: Level::Error,
                    offset,
                    message: format!(
                        "{} takes {takes} but its input {} emits {emits}",
                        node.label(),
                        producer.label()
                    ),
                    help: None,
                });
            }
        }
    }
    if let Some((cycle, offset)) = find_cycle(&nodes, &by_name) {
        problems.push(Problem {
            level: Level::Error,
            offset,
            message: format!("cycle in the pipeline: {}", cycle.join(" → ")),
            help: Some("a component cannot read, directly or not, from itself".into()),
        });
    }
    // Only parsed components: one whose table has errors was reported already.
    for node in nodes.iter().filter(|n| n.config.is_some()) {
        if node.role != ComponentRole::Sink && !consumed.contains(node.name) {
            problems.push(Problem {
                level: Level::Warning,
                offset: node.offset,
                message: format!(
                    "{} is not an input of any component; its output is discarded",
                    node.label()
                ),
                help: None,
            });
        }
    }
    problems
}

fn find_cycle<'a>(
    nodes: &[Node<'a>],
    by_name: &BTreeMap<&'a str, &Node<'a>>,
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
        by_name: &BTreeMap<&'a str, &Node<'a>>,
        colour: &mut BTreeMap<&'a str, Colour>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        colour.insert(node, Colour::Grey);
        path.push(node);
        if let Some(spec) = by_name.get(node) {
            for input in spec.inputs {
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
    for node in nodes {
        if colour.get(node.name) == Some(&Colour::White) {
            let mut path = Vec::new();
            if let Some(cycle) = visit(node.name, by_name, &mut colour, &mut path) {
                return Some((cycle, node.offset));
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

/// One component as other components see it: read-only.
pub struct ComponentView {
    /// Its name.
    pub name: String,
    /// Source, processor or sink.
    pub role: ComponentRole,
    /// Its `type`.
    pub type_name: String,
    /// The components it reads from.
    pub inputs: Vec<String>,
    /// The kinds it takes (nothing for a source).
    pub input_kinds: RecordKinds,
    /// The kinds it emits (nothing for a sink).
    pub output_kinds: RecordKinds,
    /// Whether it is a notification sink, named in alert rules' `channels`.
    pub routes_by_channel: bool,
    /// What its producers do when its buffer is full.
    pub when_full: crate::config::WhenFull,
    config: Arc<dyn ComponentConfig>,
}

impl ComponentView {
    /// The plugin's own typed config, for a plugin that knows the type
    /// (two `rest` sinks comparing what they mount, say).
    pub fn as_any(&self) -> &dyn Any {
        self.config.as_any()
    }

    /// The typed config, if the component's config is a `T`.
    pub fn config<T: 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref::<T>()
    }
}

impl std::fmt::Debug for ComponentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentView")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("type_name", &self.type_name)
            .field("inputs", &self.inputs)
            .finish_non_exhaustive()
    }
}

/// The whole pipeline as components see it: each component's name, role,
/// type, inputs, kinds and typed config, in the config file's order. Given
/// to plugins in validation and at build, so that one component can check
/// another (two sinks sharing an HTTP address) or find what feeds it.
#[derive(Debug, Clone, Default)]
pub struct TopologyView {
    components: Arc<[ComponentView]>,
    stores: Arc<crate::config::Stores>,
}

impl TopologyView {
    /// The view of a parsed pipeline's components.
    pub fn new(components: &[ComponentSpec], stores: &crate::config::Stores) -> TopologyView {
        let mut views: Vec<(usize, ComponentView)> = components
            .iter()
            .map(|spec| {
                (
                    spec.offset,
                    ComponentView {
                        name: spec.name.clone(),
                        role: spec.role,
                        type_name: spec.type_name.clone(),
                        inputs: spec.inputs.clone(),
                        input_kinds: spec.config.input_kinds(),
                        output_kinds: spec.config.output_kinds(),
                        routes_by_channel: spec.config.routes_by_channel(),
                        when_full: spec.when_full,
                        config: Arc::clone(&spec.config),
                    },
                )
            })
            .collect();
        views.sort_by_key(|(offset, _)| *offset);
        TopologyView {
            components: views.into_iter().map(|(_, v)| v).collect(),
            stores: Arc::new(stores.clone()),
        }
    }

    /// The declared `[stores.NAME]`, by name.
    pub fn stores(&self) -> &crate::config::Stores {
        &self.stores
    }

    /// Every component, in the config file's order.
    pub fn components(&self) -> &[ComponentView] {
        &self.components
    }

    /// The component called `name`.
    pub fn get(&self, name: &str) -> Option<&ComponentView> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The components that read `name`'s output.
    pub fn consumers_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ComponentView> {
        self.components
            .iter()
            .filter(move |c| c.inputs.iter().any(|i| i == name))
    }
}
