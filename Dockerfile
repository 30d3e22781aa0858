# Spatial-SAM inference server: gRPC (models, volumes, SDF, segmentation) plus the HTTP bridge.
# Configuration is through SPATIAL_SAM_* environment variables (see `spatial-sam serve --help`).
# It binds 0.0.0.0, so it needs bearer tokens: mount a token file at /run/secrets/spatial_sam_tokens.

# ---- build: install exact dependencies from the lock file, check types, build the viewer bundle,
#      prune dev dependencies
FROM node:20-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto ./proto
COPY src ./src
COPY server ./server
COPY neuroglancer-layer ./neuroglancer-layer
RUN npm run typecheck
RUN npm run build:viewer
RUN npm prune --omit=dev

# ---- runtime: Node, onnxruntime-node (CPU binaries ship in the npm package), server, models
FROM node:20-bookworm-slim AS runtime
WORKDIR /app
ENV NODE_ENV=production \
    SPATIAL_SAM_HOST=0.0.0.0 \
    SPATIAL_SAM_PORT=50051 \
    SPATIAL_SAM_HTTP_PORT=8080 \
    SPATIAL_SAM_MODELS=/app/models \
    SPATIAL_SAM_ROOTS=/data \
    SPATIAL_SAM_EXECUTION_PROVIDER=cpu \
    SPATIAL_SAM_TOKEN_FILE=/run/secrets/spatial_sam_tokens \
    SPATIAL_SAM_PROPAGATOR=/app/models/propagator_lucchi \
    SPATIAL_SAM_SDF_MODEL=sdf_unet3d_lucchi
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/proto/gen ./proto/gen
COPY --from=build /app/src ./src
COPY --from=build /app/server ./server
COPY --from=build /app/neuroglancer-layer/dist ./neuroglancer-layer/dist
COPY models ./models
RUN rm -rf models/spatialsam models/tests models/scripts models/bench models/.venv && mkdir -p /data
USER node
EXPOSE 50051 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "--import", "tsx", "server/bin/health_probe.ts"]
CMD ["node", "--import", "tsx", "server/cli.ts", "serve"]
