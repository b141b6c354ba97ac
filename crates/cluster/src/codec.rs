//! How verger's operators travel inside Ballista plans, and the session
//! settings every process of a cluster shares.
//!
//! Only the operators need a codec: `featurize`, `pca_fit` and `pca_project`
//! travel by name and each process resolves them in its own registry (the
//! real ones on executors, planning-only ones on the client and scheduler).

use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::{internal_datafusion_err, internal_err, not_impl_err};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{
    ComposedPhysicalExtensionCodec, PhysicalExtensionCodec, PhysicalProtoConverterExtension,
};
use serde::{Deserialize, Serialize};

use crate::part_write::{PartWriteExec, PartWriteSpec};
use crate::slices::{ImageListExec, ImageListSpec, StagedReadExec, StagedReadSpec};

/// gRPC messages carry a PCA state of 6.6 MB at 1280 dimensions; Ballista's
/// 16 MiB default leaves too little room for a larger model.
pub const GRPC_MESSAGE_LIMIT: usize = 64 << 20;

/// verger's operators first, then Ballista's own (shuffles and the like).
/// The same codec must be set on the client, the scheduler and executors.
pub fn physical_codec() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(ComposedPhysicalExtensionCodec::new(vec![
        Arc::new(VergerPhysicalCodec),
        Arc::new(BallistaPhysicalExtensionCodec::default()),
    ]))
}

/// The session settings of every verger cluster process. A job's client
/// sends its own on top.
pub fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_information_schema(false)
        .with_round_robin_repartition(false)
        .with_ballista_grpc_client_max_message_size(GRPC_MESSAGE_LIMIT)
        // One slice per task, so every executor gets a share.
        .set_usize("ballista.scheduler.max_partitions_per_task", 1)
        // Fail within seconds, not minutes, when the scheduler is gone.
        .set_u64("ballista.client.grpc_connect_timeout_seconds", 5)
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
}

#[derive(Debug, Serialize, Deserialize)]
enum VergerNode {
    ImageList(ImageListSpec),
    StagedRead(StagedReadSpec),
    PartWrite(PartWriteSpec),
}

/// Encodes verger's operators as small JSON specs (locations as URLs,
/// never credentials).
#[derive(Debug)]
pub struct VergerPhysicalCodec;

impl PhysicalExtensionCodec for VergerPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = inputs else {
            return internal_err!("verger operators have exactly one input");
        };
        let node: VergerNode = serde_json::from_slice(buf)
            .map_err(|e| internal_datafusion_err!("cannot decode a verger operator: {e}"))?;
        Ok(match node {
            VergerNode::ImageList(spec) => Arc::new(ImageListExec::try_new(input.clone(), spec)?),
            VergerNode::StagedRead(spec) => Arc::new(StagedReadExec::try_new(input.clone(), spec)?),
            VergerNode::PartWrite(spec) => Arc::new(PartWriteExec::try_new(input.clone(), spec)?),
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let node = if let Some(n) = node.downcast_ref::<ImageListExec>() {
            VergerNode::ImageList(n.spec().clone())
        } else if let Some(n) = node.downcast_ref::<StagedReadExec>() {
            VergerNode::StagedRead(n.spec().clone())
        } else if let Some(n) = node.downcast_ref::<PartWriteExec>() {
            VergerNode::PartWrite(n.spec().clone())
        } else {
            // Not ours: the composed codec then asks Ballista's.
            return not_impl_err!("not a verger operator: {}", node.name());
        };
        serde_json::to_writer(buf, &node)
            .map_err(|e| internal_datafusion_err!("cannot encode a verger operator: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::{ExecutionPlanProperties, displayable};
    use datafusion::prelude::SessionContext;
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;

    use super::*;
    use crate::part_write::{PartKind, PartWriteExec, PartWriteSpec};
    use crate::slices::{SLICE_COLUMN, seeds};

    fn round_trip(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let codec = physical_codec();
        let node = PhysicalPlanNode::try_from_physical_plan(plan, codec.as_ref()).unwrap();
        let ctx = SessionContext::new();
        node.try_into_physical_plan(&ctx.task_ctx(), codec.as_ref())
            .unwrap()
    }

    #[test]
    fn verger_operators_survive_the_codec_with_their_specs() {
        let list = Arc::new(
            ImageListExec::try_new(
                seeds(6).unwrap(),
                ImageListSpec {
                    root: "s3://fruits/images".into(),
                    glob: "*.jpg".into(),
                    batch_size: 32,
                    output: "s3://fruits/out".into(),
                    attempt: "1a2b3c4d".into(),
                },
            )
            .unwrap(),
        );
        let back = round_trip(list.clone());
        let decoded = back
            .downcast_ref::<ImageListExec>()
            .expect("an ImageListExec");
        assert_eq!(decoded.spec(), list.spec());
        assert_eq!(back.output_partitioning().partition_count(), 6);
        assert_eq!(back.schema(), list.schema());

        let staged = Arc::new(
            StagedReadExec::try_new(
                seeds(3).unwrap(),
                StagedReadSpec {
                    output: "/tmp/out".into(),
                },
            )
            .unwrap(),
        );
        let back = round_trip(staged.clone());
        assert_eq!(
            back.downcast_ref::<StagedReadExec>().unwrap().spec(),
            staged.spec()
        );
        assert_eq!(back.schema().fields().last().unwrap().name(), SLICE_COLUMN);
    }

    #[test]
    fn a_writer_over_a_projection_round_trips_whole() {
        use datafusion::physical_expr::PhysicalExpr;
        use datafusion::physical_plan::expressions::Column;
        use datafusion::physical_plan::projection::ProjectionExec;
        let staged: Arc<dyn ExecutionPlan> = Arc::new(
            StagedReadExec::try_new(
                seeds(2).unwrap(),
                StagedReadSpec {
                    output: "s3://fruits/out".into(),
                },
            )
            .unwrap(),
        );
        // (path, label, features, pca, slice): `features` stands in for `pca`.
        let names = ["path", "label", "features", "features", "slice"];
        let schema = staged.schema();
        let columns: Vec<(Arc<dyn PhysicalExpr>, String)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let index = schema.index_of(name).unwrap();
                let alias = if i == 3 { "pca" } else { name };
                (
                    Arc::new(Column::new(name, index)) as Arc<dyn PhysicalExpr>,
                    alias.to_string(),
                )
            })
            .collect();
        let projection = Arc::new(ProjectionExec::try_new(columns, staged).unwrap());
        let spec = PartWriteSpec {
            output: "s3://fruits/out".into(),
            kind: PartKind::Features,
        };
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(PartWriteExec::try_new(projection, spec.clone()).unwrap());
        let back = round_trip(plan.clone());
        assert_eq!(back.downcast_ref::<PartWriteExec>().unwrap().spec(), &spec);
        assert_eq!(
            displayable(back.as_ref()).indent(true).to_string(),
            displayable(plan.as_ref()).indent(true).to_string()
        );
    }

    #[test]
    fn foreign_operators_are_left_to_the_next_codec() {
        let codec = VergerPhysicalCodec;
        let mut buf = Vec::new();
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        let err = codec
            .try_encode(seeds(1).unwrap(), &mut buf, &converter)
            .unwrap_err();
        assert!(err.to_string().contains("not a verger operator"), "{err}");
    }
}
