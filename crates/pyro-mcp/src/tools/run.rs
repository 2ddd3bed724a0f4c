//! `vm_run` and the VMs with a lifecycle of their own (`vm_*`).

use pyro::{Discard, Silent};
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::{tool, tool_router};

use super::{call, PyroServer};
use crate::params::*;

#[tool_router(router = run_router, vis = "pub(super)")]
impl PyroServer {
    #[tool(
        description = "Boot a fresh microVM, run one command in it, delete the VM. Returns exit code, stdout and stderr."
    )]
    async fn vm_run(
        &self,
        Parameters(p): Parameters<VmRunParams>,
    ) -> Result<Json<pyro::RunResult>, String> {
        if p.allow_host_compat && !self.access.allow_host_compat {
            return Err("allow_host_compat: this server does not run commands on the host; it must be started with --allow-host-compat".into());
        }
        call(&self.pyro, move |pyro| {
            let params = pyro::RunParams {
                environment: p.environment,
                command: p.command.into(),
                vcpu_count: p.vcpu_count,
                mem_mib: p.mem_mib,
                timeout_seconds: p.timeout_seconds,
                ttl_seconds: p.ttl_seconds,
                network: p.network,
                allow_host_compat: p.allow_host_compat,
            };
            pyro.run_in_vm(&params, &Silent, &mut Discard)
        })
        .await
    }
}

#[tool_router(router = vm_router, vis = "pub(super)")]
impl PyroServer {
    #[tool(
        description = "Create a microVM without booting it (vm_start boots it). It is deleted after ttl_seconds."
    )]
    async fn vm_create(
        &self,
        Parameters(p): Parameters<VmCreateParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| {
            let params = pyro::CreateVm {
                environment: p.environment,
                vcpu_count: p.vcpu_count,
                mem_mib: p.mem_mib,
                ttl_seconds: p.ttl_seconds,
                network: p.network,
                allow_host_compat: p.allow_host_compat,
            };
            pyro.create_vm(&params, &Silent)
        })
        .await
    }

    #[tool(description = "Boot a created or stopped microVM.")]
    async fn vm_start(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| pyro.start_vm(&p.vm_id, &Silent)).await
    }

    #[tool(
        description = "Run one command in a microVM (booting it if needed), then delete the VM. A non-zero exit code is a result, not an error.",
        annotations(destructive_hint = true)
    )]
    async fn vm_exec(
        &self,
        Parameters(p): Parameters<VmExecParams>,
    ) -> Result<Json<pyro::RunResult>, String> {
        call(&self.pyro, move |pyro| {
            pyro.exec_vm(
                &p.vm_id,
                &p.command.into(),
                p.timeout_seconds,
                &Silent,
                &mut Discard,
            )
        })
        .await
    }

    #[tool(description = "Stop a microVM; its disk stays for the next vm_start.")]
    async fn vm_stop(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| pyro.stop_vm(&p.vm_id)).await
    }

    #[tool(
        description = "Delete a microVM and its disk.",
        annotations(destructive_hint = true)
    )]
    async fn vm_delete(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmDeleted>, String> {
        call(&self.pyro, move |pyro| pyro.delete_vm(&p.vm_id)).await
    }

    #[tool(
        description = "A microVM's state (created, started or stopped), resources and expiry.",
        annotations(read_only_hint = true)
    )]
    async fn vm_status(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmInfo>, String> {
        call(&self.pyro, move |pyro| pyro.status_vm(&p.vm_id)).await
    }

    #[tool(
        description = "A microVM's guest network: address, gateway, DNS, and whether outbound traffic is expected to work.",
        annotations(read_only_hint = true)
    )]
    async fn vm_network_info(
        &self,
        Parameters(p): Parameters<VmIdParams>,
    ) -> Result<Json<pyro::VmNetworkInfo>, String> {
        call(&self.pyro, move |pyro| pyro.network_info_vm(&p.vm_id)).await
    }

    #[tool(
        description = "Delete every microVM past its TTL.",
        annotations(destructive_hint = true)
    )]
    async fn vm_reap_expired(
        &self,
        Parameters(_): Parameters<EmptyParams>,
    ) -> Result<Json<pyro::Reaped>, String> {
        call(&self.pyro, |pyro| Ok(pyro.reap_expired())).await
    }

    #[tool(
        description = "The environment catalog and what is installed.",
        annotations(read_only_hint = true)
    )]
    async fn vm_list_environments(
        &self,
        Parameters(_): Parameters<EmptyParams>,
    ) -> Result<Json<EnvironmentList>, String> {
        call(&self.pyro, |pyro| {
            Ok(EnvironmentList {
                catalog_version: pyro::CATALOG_VERSION.into(),
                environments: pyro.list_environments(),
            })
        })
        .await
    }
}
