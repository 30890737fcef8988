-- Argo CD health check for Overseer's kinds (agents/runway/fleet.overseer.dev, v1alpha1).
-- One script for every kind, registered per kind in argocd-cm by config/argocd/kustomization.yaml.
-- Written for Lua 5.1 (Argo CD's gopher-lua); tested in e2e/tests/argocd_health.rs.
--
-- Order: no status or a status of an older generation -> Progressing; then the kind's phase;
-- then kstatus's conditions (Stalled=True -> Degraded, Reconciling=True -> Progressing,
-- Ready=True -> Healthy, Ready=False -> Degraded for configuration kinds, Progressing otherwise).

local function condition(status, type_)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function explain(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local hs = {}
local kind = obj.kind
local spec = obj.spec or {}
local status = obj.status

-- Decided by a human in the spec, whatever the status says.
if kind == "FleetApproval" then
  if spec.review == nil then
    hs.status = "Suspended"
    hs.message = "Waiting for a reviewer to approve or reject"
  elseif spec.review.decision == "Approved" then
    hs.status = "Healthy"
    hs.message = "Approved by " .. tostring(spec.review.reviewer)
  else
    hs.status = "Degraded"
    hs.message = "Rejected by " .. tostring(spec.review.reviewer)
  end
  return hs
end

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Overseer operator to report status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Overseer operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
local phase = status.phase

if kind == "FleetRollout" then
  if phase == "Failed" or phase == "RolledBack" or phase == "RollingBack" or phase == "Abandoned" then
    hs.status = "Degraded"
    hs.message = explain(stalled, "Rollout " .. phase)
    return hs
  end
  if phase == "Paused" or spec.state == "Pause" then
    hs.status = "Suspended"
    hs.message = explain(condition(status, "Reconciling"), "Rollout paused")
    return hs
  end
  if phase == "WaitingForApproval" then
    hs.status = "Suspended"
    hs.message = explain(condition(status, "Reconciling"), "Waiting for a FleetApproval")
    return hs
  end
elseif kind == "InferenceRuntime" then
  if phase == "Failed" or phase == "Degraded" then
    hs.status = "Degraded"
    hs.message = explain(condition(status, "Degraded"), explain(ready, "Runtime " .. phase))
    return hs
  end
  if phase == "Switching" or phase == "Provisioning" or phase == "Pending" then
    hs.status = "Progressing"
    hs.message = explain(condition(status, "Progressing"), "Runtime " .. phase)
    return hs
  end
elseif kind == "EphemeralIdentity" then
  if phase == "Denied" then
    hs.status = "Degraded"
    hs.message = explain(ready, "Identity denied")
    return hs
  end
  if phase == "Expired" or phase == "Revoked" then
    -- The end of an identity's life, as designed: its token no longer works.
    hs.status = "Healthy"
    hs.message = "Identity " .. phase .. "; its token no longer authenticates"
    return hs
  end
  if phase == "Pending" then
    hs.status = "Progressing"
    hs.message = explain(ready, "Identity pending")
    return hs
  end
elseif kind == "AgentApproval" then
  if phase == "Pending" or phase == nil then
    hs.status = "Suspended"
    hs.message = "Waiting for a reviewer"
    return hs
  end
  if phase == "Denied" or phase == "Expired" then
    hs.status = "Degraded"
    hs.message = "Approval " .. phase
    return hs
  end
  hs.status = "Healthy"
  hs.message = "Approval " .. phase
  return hs
elseif kind == "FleetCluster" then
  if spec.paused == true then
    hs.status = "Suspended"
    hs.message = "Deliveries to this cluster are paused"
    return hs
  end
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled, "Stalled")
  return hs
end
local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = explain(reconciling, "Reconciling")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready, "Ready")
  return hs
end
if ready ~= nil and ready.status == "False" then
  -- Configuration kinds are ready as soon as they are checked: not ready means something to fix.
  if kind == "AgentPolicy" or kind == "ClusterAgentPolicy" or kind == "EphemeralIdentityClass" or kind == "FleetCluster" or kind == "MCPServer" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = explain(ready, "Not ready")
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
