// One pipeline step on the canvas: its id, what it runs, and (on a deployment) its state.
import { Handle, Position } from "@xyflow/react";

export default function StepNode({ data, selected }) {
  const classes = ["step-node", `step-${data.kind}`];
  if (data.state) classes.push(`state-${data.state}`);
  if (data.problems && data.problems.length) classes.push("has-problems");
  if (selected) classes.push("selected");
  return (
    <div className={classes.join(" ")} data-testid={`node-${data.label}`} data-state={data.state || ""}>
      <Handle type="target" position={Position.Left} />
      <div className="step-title">{data.label}</div>
      <div className="step-sub">{data.kind}: {data.catalogName}{data.state ? ` · ${data.state}` : ""}</div>
      <Handle type="source" position={Position.Right} />
    </div>
  );
}
