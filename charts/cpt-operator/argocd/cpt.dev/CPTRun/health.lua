-- Argo CD health of a cpt.dev/v1alpha1 CPTRun.
-- Progressing while the operator has not observed the newest spec or the run is in flight,
-- Suspended when suspended or halted for forgetting, Healthy when it succeeded, Degraded when it
-- failed. Uses no Lua library (Argo CD runs health checks without them by default).
local hs = {}

local function int(x)
  return tostring(x - x % 1)
end

local function percent(ratio)
  local tenths = ratio * 1000 + 0.5
  tenths = tenths - tenths % 1
  return tostring(tenths / 10) .. "%"
end

-- The message of the condition a tenant should read: the first False/Unknown one, else Ready.
local function condition_message(status)
  local ready = nil
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.message ~= nil and c.message ~= "" then
        if c.status ~= "True" and c.type == "Ready" then
          return c.message
        end
        if c.type == "Ready" then
          ready = c.message
        end
      end
    end
    for _, c in ipairs(status.conditions) do
      if c.status ~= "True" and c.message ~= nil and c.message ~= "" then
        return c.message
      end
    end
  end
  return ready
end

local function with_detail(text, detail)
  if detail ~= nil and detail ~= "" then
    return text .. ": " .. detail
  end
  return text
end

local function progress_text(status)
  local p = status.progress
  if p == nil then
    return nil
  end
  if p.step ~= nil and p.totalSteps ~= nil and p.totalSteps > 0 then
    local text = "step " .. int(p.step) .. "/" .. int(p.totalSteps)
    if p.percent ~= nil then
      text = text .. " (" .. percent(p.percent / 100) .. ")"
    end
    return text
  end
  if p.display ~= nil then
    return p.display
  end
  return nil
end

local function best_text(status)
  local best = status.bestCheckpoint
  if best == nil then
    return "no eligible checkpoint"
  end
  return "best checkpoint step " .. int(best.step) .. " at " .. best.uri
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the run"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. int(generation)
  return hs
end

local phase = status.phase
if phase == nil or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = with_detail("Pending", condition_message(status))
elseif phase == "WaitingForCorpus" then
  hs.status = "Progressing"
  hs.message = with_detail("Waiting for its corpora to be Ready", condition_message(status))
elseif phase == "Starting" then
  hs.status = "Progressing"
  hs.message = with_detail("Starting the training job", status.pytorchJobName)
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = with_detail("Running", progress_text(status))
elseif phase == "Restarting" then
  hs.status = "Progressing"
  hs.message = with_detail("Restarting from the newest checkpoint", condition_message(status))
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = with_detail("Suspended (spec.suspend); resumes from the newest checkpoint", progress_text(status))
elseif phase == "Halted" then
  hs.status = "Suspended"
  local text = "Halted: forgetting threshold exceeded"
  local halt = status.halt
  if halt ~= nil and halt.regression ~= nil and halt.threshold ~= nil then
    text = "Halted: general regression " .. percent(halt.regression) .. " over threshold " .. percent(halt.threshold)
    if halt.step ~= nil then
      text = text .. " at step " .. int(halt.step)
    end
  end
  hs.message = text .. "; " .. best_text(status)
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Succeeded; " .. best_text(status)
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = with_detail("Failed", condition_message(status))
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
