//! The `DevicePlugin` service of one resource, served on its own socket.
//!
//! Every resource's service reads the latest scan through a `watch` channel: `ListAndWatch`
//! sends the resource's list at once and again at each change, and ends when the channel's
//! sender is dropped (the resource is gone or the plugin stops), so a server can shut down
//! gracefully without waiting for the kubelet to hang up.

use std::pin::Pin;
use std::sync::Arc;

use gpuslice_core::config::Allocation;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::allocate::{self, AllocateError};
use crate::api::device_plugin_server::DevicePlugin;
use crate::api::{
    AllocateRequest, AllocateResponse, ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty,
    ListAndWatchResponse, PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse,
};
use crate::inventory::Snapshot;

pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";

/// The options every gpuslice resource registers with.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }
}

/// One resource's service.
#[derive(Debug, Clone)]
pub struct ResourceService {
    pub resource: String,
    pub allocation: Allocation,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
}

/// The resource's list as `ListAndWatch` sends it.
pub fn list(snapshot: &Snapshot, resource: &str) -> ListAndWatchResponse {
    let devices = snapshot
        .devices(resource)
        .iter()
        .map(|d| Device {
            id: d.id.clone(),
            health: if d.healthy() { HEALTHY } else { UNHEALTHY }.to_owned(),
            topology: None,
        })
        .collect();
    ListAndWatchResponse { devices }
}

impl From<AllocateError> for Status {
    fn from(e: AllocateError) -> Status {
        match e {
            AllocateError::Unknown { .. } | AllocateError::Repeated(_) | AllocateError::SameGpu { .. } => {
                Status::invalid_argument(e.to_string())
            }
            AllocateError::Unhealthy { .. } => Status::failed_precondition(e.to_string()),
        }
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DevicePlugin for ResourceService {
    async fn get_device_plugin_options(&self, _: Request<Empty>) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let mut rx = self.snapshot.clone();
        let resource = self.resource.clone();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = list(&rx.borrow_and_update(), &resource);
                if last.as_ref() != Some(&now) {
                    if tx.send(Ok(now.clone())).await.is_err() {
                        break;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let snapshot = self.snapshot.borrow().clone();
        let devices = snapshot.devices(&self.resource);
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|r| ContainerPreferredAllocationResponse {
                device_i_ds: allocate::preferred(
                    devices,
                    &r.available_device_i_ds,
                    &r.must_include_device_i_ds,
                    usize::try_from(r.allocation_size).unwrap_or(0),
                    self.allocation,
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, request: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let snapshot = self.snapshot.borrow().clone();
        let devices = snapshot.devices(&self.resource);
        let mut container_responses = Vec::new();
        for r in &request.get_ref().container_requests {
            match allocate::allocate(&snapshot.kind, &self.resource, devices, &r.devices_ids) {
                Ok(response) => container_responses.push(response),
                Err(e) => {
                    tracing::warn!(resource = %self.resource, ids = ?r.devices_ids, %e, "Allocate refused");
                    return Err(e.into());
                }
            }
        }
        tracing::info!(resource = %self.resource, request = ?request.get_ref().container_requests, "allocated");
        Ok(Response::new(AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}
