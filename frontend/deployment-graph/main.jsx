// The deployment page's pipeline graph, read-only, coloured by step state; mounted on
// #deployment-graph (app/templates/ui/deployment.html).
import { createRoot } from "react-dom/client";
import { ReactFlow, ReactFlowProvider, Background } from "@xyflow/react";
import "../shared/flow.css";
import StepNode from "../shared/StepNode.jsx";

const nodeTypes = { step: StepNode };

function Graph() {
  return (
    <div className="island-canvas">
      <ReactFlow nodes={[]} edges={[]} nodeTypes={nodeTypes} fitView nodesDraggable={false} nodesConnectable={false}>
        <Background />
      </ReactFlow>
    </div>
  );
}

const mount = document.getElementById("deployment-graph");
if (mount) createRoot(mount).render(<ReactFlowProvider><Graph /></ReactFlowProvider>);
