// Calibration rules of tiff_calibration.ts on the tag values real files carry (the fixture files
// in tiff.test.ts cover ImageJ-nm and OME as written by tifffile).

import { describe, expect, it } from "vitest";
import { nmPerUnit, tiffVoxelSizeNm } from "#server/volume/tiff_calibration.ts";

describe("tiffVoxelSizeNm", () => {
  it("reads ImageJ calibration in microns, with the escaped µ ImageJ writes", () => {
    const description = "ImageJ=1.53t\nimages=10\nslices=10\nunit=micron\nspacing=0.03\nloop=false\n";
    const v = tiffVoxelSizeNm({ description, xResolution: [250, 1], yResolution: [200, 1], resolutionUnit: 1 });
    expect(v?.map((x) => Number(x.toFixed(9)))).toEqual([30, 5, 4]);
    expect(nmPerUnit("\\u00B5m")).toBe(1000);
    expect(nmPerUnit("µm")).toBe(1000);
  });

  it("takes z equal to x when ImageJ gives no spacing", () => {
    expect(tiffVoxelSizeNm({ description: "ImageJ=1.11a\nunit=nm\n", xResolution: [1, 6], yResolution: [1, 6] })).toEqual([6, 6, 6]);
  });

  it("treats pixel units and missing resolutions as uncalibrated", () => {
    expect(tiffVoxelSizeNm({ description: "ImageJ=1.11a\nunit=pixel\n", xResolution: [1, 1], yResolution: [1, 1] })).toBeUndefined();
    expect(tiffVoxelSizeNm({ description: "ImageJ=1.11a\nunit=nm\n" })).toBeUndefined();
    expect(tiffVoxelSizeNm({})).toBeUndefined();
  });

  it("uses pixels per centimetre and ignores pixels per inch (print DPI)", () => {
    expect(tiffVoxelSizeNm({ xResolution: [2_000_000, 1], yResolution: [1_000_000, 1], resolutionUnit: 3 })).toEqual([5, 10, 5]);
    expect(tiffVoxelSizeNm({ xResolution: [72, 1], yResolution: [72, 1], resolutionUnit: 2 })).toBeUndefined();
  });

  it("reads OME PhysicalSize with the schema's default unit (µm) and prefers it over ImageJ", () => {
    const ome = '<?xml version="1.0"?><OME><Image><Pixels ID="Pixels:0" PhysicalSizeX="0.004" PhysicalSizeY="0.004" PhysicalSizeZ="40" PhysicalSizeZUnit="nm" SizeX="10"/></Image></OME>';
    expect(tiffVoxelSizeNm({ description: ome, xResolution: [1, 99], yResolution: [1, 99], resolutionUnit: 3 })).toEqual([40, 4, 4]);
  });
});
