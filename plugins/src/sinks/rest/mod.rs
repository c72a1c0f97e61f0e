//! `rest`: serves the newest metrics document, its history, health, status,
//! OpenAPI, Prometheus text and workflow control over HTTP (CONTRACT §4),
//! on a server shared with the other HTTP sinks at its address.

pub mod alerts;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod prometheus;
pub mod routes;
pub mod rules;

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use flowpulse_core::plugin::{
    BuildContext, BuildError, ComponentError, FieldError, PluginDescriptor, Sink, SinkConfig,
    ValidateContext,
};
use flowpulse_core::record::{Batch, Record, RecordKinds};

pub use config::{ControlConfig, RestConfig};
use routes::{Latest, RestState};

use crate::http::{HttpMount, HttpServers, Mount};

inventory::submit! {
    PluginDescriptor::sink::<RestConfig>("rest", "Serves metrics, health, status, OpenAPI, Prometheus text and workflow control over HTTP")
}

#[async_trait]
impl SinkConfig for RestConfig {
    fn validate(&self, cx: &ValidateContext<'_>) -> Vec<FieldError> {
        self.check(cx)
    }

    fn inputs(&self) -> RecordKinds {
        RecordKinds::METRICS
    }

    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Sink>, BuildError> {
        let server = HttpServers::of(cx).open(cx, &self.server_options())?;
        let control = self
            .control
            .as_ref()
            .map(|c| control::Control::new(c, &cx.name, &cx.stats, cx.shutdown.clone()))
            .transpose()
            .map_err(|e| BuildError(format!("`control.url`: {e}")))?;
        let store = self
            .store
            .as_deref()
            .map(|name| crate::stores::Stores::of(cx).open(cx, name))
            .transpose()
            .map_err(|e| BuildError(e.to_string()))?;
        let channels =
            crate::processors::alert_rules::AlertRulesConfig::known_channels_of(&cx.topology);
        let state = Arc::new(RestState {
            store,
            channels,
            latest: RwLock::new(None),
            telemetry: cx.telemetry.clone(),
            pipeline: cx.pipeline.name.clone(),
            started: Instant::now(),
            control,
            server: Arc::clone(&server),
            prometheus: self.prometheus,
            openapi: OnceLock::new(),
        });
        let filter = routes::filter(Arc::clone(&state), self);
        let mount = server.mount(&cx.name, routes::routes(self), filter);
        Ok(Box::new(RestSink {
            state,
            mount: Some(mount),
        }))
    }
}

struct RestSink {
    state: Arc<RestState>,
    /// Held until flushed: the server lives while a sink on it does.
    mount: Option<Mount>,
}

#[async_trait]
impl Sink for RestSink {
    async fn write(&mut self, batch: &Batch) -> Result<(), ComponentError> {
        let newest = batch.records().iter().rev().find_map(|r| match r {
            Record::Metrics(m) => Some(Arc::clone(m)),
            _ => None,
        });
        let Some(doc) = newest else {
            return Ok(());
        };
        // Encoded once per document; every request copies these bytes.
        let data = serde_json::to_vec(&doc.with_newest_history_point()).map_err(|e| {
            ComponentError::Transient(format!("cannot encode the metrics document: {e}"))
        })?;
        let latest = Arc::new(Latest {
            doc,
            data,
            at: Instant::now(),
        });
        *self.state.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(latest);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ComponentError> {
        if let Some(mount) = self.mount.take() {
            mount.release().await;
        }
        Ok(())
    }
}
