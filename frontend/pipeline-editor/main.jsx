// The pipeline editor island, mounted on #pipeline-editor (app/templates/ui/pipeline.html).
import { createRoot } from "react-dom/client";
import { useEffect, useState } from "react";
import { ReactFlow, ReactFlowProvider, Background, Controls } from "@xyflow/react";
import "../shared/flow.css";
import StepNode from "../shared/StepNode.jsx";
import { api, layout, toFlow } from "../shared/graph.js";

const nodeTypes = { step: StepNode };

function Editor({ versionUrl }) {
  const [graph, setGraph] = useState({ nodes: [], edges: [] });
  useEffect(() => {
    if (!versionUrl) return;
    api(versionUrl).then(async (version) => {
      const { nodes, edges } = toFlow(version.definition);
      setGraph({ nodes: await layout(nodes, edges), edges });
    });
  }, [versionUrl]);
  return (
    <div className="island-canvas">
      <ReactFlow nodes={graph.nodes} edges={graph.edges} nodeTypes={nodeTypes} fitView>
        <Background />
        <Controls />
      </ReactFlow>
    </div>
  );
}

const mount = document.getElementById("pipeline-editor");
if (mount) {
  createRoot(mount).render(
    <ReactFlowProvider><Editor versionUrl={mount.dataset.versionUrl} /></ReactFlowProvider>,
  );
}
